"""Attachments on an S3-compatible bucket: moto's S3 server on loopback, started here, and the
real SDK (aiobotocore) talking to it; never a mock of the SDK. Uploads through the API go to
the bucket (one PUT for a small file, a multipart upload above 5 MiB), come back byte for
byte, and go with their room; the server stopped during an upload is a 503 that leaves no row
and no object."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer
from sqlalchemy import func, select

from gemini_backend.attachments.models import Attachment
from gemini_backend.attachments.storage import S3_PART_BYTES
from tests.attachments import files

ACCESS = {"aws_access_key_id": "test-key", "aws_secret_access_key": "test-secret"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class S3Server:
    def __init__(self) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: ThreadedMotoServer | None = None

    def start(self) -> None:
        # moto keeps the buckets in this process: a server started again sees them.
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def client(self) -> Any:
        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1", **ACCESS)


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    server = S3Server()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def bucket(s3_server: S3Server) -> str:
    if s3_server._server is None:  # a test stopped it
        s3_server.start()
    name = f"gb-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=name)
    return name


@pytest.fixture
def settings_overrides(s3_server: S3Server, bucket: str) -> dict[str, Any]:
    return {
        "s3_endpoint_url": s3_server.url,
        "s3_bucket": bucket,
        "s3_access_key_id": ACCESS["aws_access_key_id"],
        "s3_secret_access_key": ACCESS["aws_secret_access_key"],
        "attachment_max_bytes": 16 * 1024 * 1024,
    }


def objects(s3_server: S3Server, bucket: str) -> list[str]:
    listed = s3_server.client().list_objects_v2(Bucket=bucket)
    return [item["Key"] for item in listed.get("Contents", [])]


async def rows(app) -> int:
    async with app.state.services.database.sessionmaker() as session:
        return (await session.execute(select(func.count()).select_from(Attachment))).scalar_one()


@pytest.mark.parametrize("extra", [0, S3_PART_BYTES + 300_000])
async def test_uploads_go_to_the_bucket_and_come_back(
    client, app, alice, room, s3_server, bucket, extra
):
    assert app.state.services.attachments.storage.kind == "s3"
    ready = await client.get("/ready")
    assert ready.json()["storage"] == "s3"
    data = files.png(extra=extra)
    response = await client.post(
        f"/chatroom/{room}/attachments", files={"file": ("p.png", data)}, headers=alice
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["sha256"] == hashlib.sha256(data).hexdigest()
    [key] = objects(s3_server, bucket)
    assert s3_server.client().get_object(Bucket=bucket, Key=key)["Body"].read() == data
    got = await client.get(f"/chatroom/{room}/attachments/{body['id']}", headers=alice)
    assert got.status_code == 200
    assert got.content == data
    assert (await client.delete(f"/chatroom/{room}", headers=alice)).status_code == 204
    assert objects(s3_server, bucket) == []


async def test_the_server_stopped_during_an_upload_is_503_and_leaves_nothing(
    client, app, alice, room, s3_server, bucket
):
    boundary = "gb-s3-fault"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n\r\n'
    ).encode()
    data = files.png(extra=S3_PART_BYTES * 2)
    step = 256 * 1024

    async def body() -> AsyncIterator[bytes]:
        yield head
        for start in range(0, len(data), step):
            # Once the first part has gone to the bucket.
            if start >= S3_PART_BYTES + step and s3_server._server is not None:
                await asyncio.to_thread(s3_server.stop)
            yield data[start : start + step]
        yield f"\r\n--{boundary}--\r\n".encode()

    response = await client.post(
        f"/chatroom/{room}/attachments",
        content=body(),
        headers={**alice, "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 503, response.text
    assert response.json()["code"] == "storage_unavailable"
    assert await rows(app) == 0
    s3_server.start()  # the same buckets: nothing was stored
    assert objects(s3_server, bucket) == []
