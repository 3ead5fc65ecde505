"""Where attachments' bytes live: a `Storage`, chosen once by services.py (`create_storage`):
files under DATA_DIR/attachments, or an S3-compatible bucket through aiobotocore (AWS S3, GCS
interoperability, Cloudflare R2, MinIO). Both take an upload as a stream of chunks and never
hold a whole file in memory: the local one writes each chunk as it comes, the S3 one sends
parts of S3_PART_BYTES (a multipart upload; one PUT for a smaller file)."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import structlog

from gemini_backend.config import Settings
from gemini_backend.core.errors import ServiceUnavailable

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

log = structlog.get_logger(__name__)

READ_CHUNK = 256 * 1024
# S3's smallest part (but the last): what an upload to a bucket holds in memory at most.
S3_PART_BYTES = 5 * 1024 * 1024


class StorageUnavailable(ServiceUnavailable):
    code = "storage_unavailable"
    detail = "The file store is unavailable; try again shortly."


class StoredObjectMissing(Exception):
    """The key names no stored object."""


class Storage(Protocol):
    kind: str  # "local" or "s3": said at startup and by /ready

    async def put(self, key: str, chunks: AsyncIterator[bytes]) -> None:
        """Store the chunks as `key`, whole or not at all; raises StorageUnavailable (and
        whatever `chunks` raises, having stored nothing)."""
        ...

    def read_chunks(self, key: str) -> AsyncIterator[bytes]:
        """The object's bytes in chunks; StoredObjectMissing, StorageUnavailable."""
        ...

    async def read(self, key: str) -> bytes:
        """The whole object (a provider's request needs it whole)."""
        ...

    async def delete(self, key: str) -> None:
        """Delete the object; a missing one is no error."""
        ...

    async def aclose(self) -> None: ...


def create_storage(settings: Settings) -> Storage:
    if settings.s3_bucket:
        return S3Storage(settings)
    return LocalStorage(settings.data_dir / "attachments")


class LocalStorage:
    """One file per object under `root`; written to a temporary name and renamed into place,
    so a reader (or a crash) never sees half a file. File IO runs in worker threads (anyio)."""

    kind = "local"

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"bad storage key {key!r}")
        return self.root / key

    async def put(self, key: str, chunks: AsyncIterator[bytes]) -> None:
        path = self._path(key)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.part")
        try:
            await anyio.Path(path.parent).mkdir(parents=True, exist_ok=True)
            async with await anyio.open_file(tmp, "wb") as out:
                async for chunk in chunks:
                    await out.write(chunk)
            await anyio.Path(tmp).rename(path)
        except OSError as exc:
            log.warning("storage_write_failed", key=key, error=str(exc))
            raise StorageUnavailable() from exc
        finally:
            with contextlib.suppress(OSError):
                await anyio.Path(tmp).unlink(missing_ok=True)

    async def read_chunks(self, key: str) -> AsyncIterator[bytes]:
        try:
            handle = await anyio.open_file(self._path(key), "rb")
        except FileNotFoundError as exc:
            raise StoredObjectMissing(key) from exc
        except OSError as exc:
            raise StorageUnavailable() from exc
        async with handle:
            while chunk := await handle.read(READ_CHUNK):
                yield chunk

    async def read(self, key: str) -> bytes:
        try:
            return await anyio.Path(self._path(key)).read_bytes()
        except FileNotFoundError as exc:
            raise StoredObjectMissing(key) from exc
        except OSError as exc:
            raise StorageUnavailable() from exc

    async def delete(self, key: str) -> None:
        try:
            await anyio.Path(self._path(key)).unlink(missing_ok=True)
        except OSError as exc:
            raise StorageUnavailable() from exc

    async def aclose(self) -> None:
        return None


class S3Storage:
    """An S3-compatible bucket. One client per process, opened at the first use (inside the
    running event loop) and closed with the services."""

    kind = "s3"

    def __init__(self, settings: Settings) -> None:
        # Imported here: the SDK (aiobotocore, botocore, aiohttp) is a second of a process's
        # start, spent only where a bucket is configured.
        from aiobotocore.config import AioConfig

        assert settings.s3_bucket
        self.bucket = settings.s3_bucket
        secret = settings.s3_secret_access_key
        self._client_args: dict[str, Any] = {
            "region_name": settings.s3_region,
            "endpoint_url": settings.s3_endpoint_url,
            "aws_access_key_id": settings.s3_access_key_id,
            "aws_secret_access_key": secret.get_secret_value() if secret else None,
            "config": AioConfig(
                # A stopped store is an answer within seconds, not a request hanging on.
                connect_timeout=5,
                read_timeout=30,
                retries={"max_attempts": 2, "mode": "standard"},
                s3={"addressing_style": "path"} if settings.s3_endpoint_url else None,
            ),
        }
        self._stack = contextlib.AsyncExitStack()
        self._client: S3Client | None = None

    def __repr__(self) -> str:
        return f"S3Storage(bucket={self.bucket!r})"

    async def _s3(self) -> S3Client:
        client = self._client
        if client is None:
            from aiobotocore.session import get_session

            session = get_session()
            client = await self._stack.enter_async_context(
                session.create_client("s3", **self._client_args)
            )
            self._client = client
        return client

    async def put(self, key: str, chunks: AsyncIterator[bytes]) -> None:
        buffer = bytearray()
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []
        try:
            s3 = await self._s3()
            async for chunk in chunks:
                buffer += chunk
                if len(buffer) >= S3_PART_BYTES:
                    if upload_id is None:
                        created = await s3.create_multipart_upload(Bucket=self.bucket, Key=key)
                        upload_id = created["UploadId"]
                    parts.append(await self._part(s3, key, upload_id, len(parts) + 1, buffer))
                    buffer = bytearray()
            if upload_id is None:
                await s3.put_object(Bucket=self.bucket, Key=key, Body=bytes(buffer))
                return
            if buffer or not parts:
                parts.append(await self._part(s3, key, upload_id, len(parts) + 1, buffer))
            await s3.complete_multipart_upload(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},  # type: ignore[typeddict-item]
            )
            upload_id = None
        except Exception as exc:
            if upload_id is not None:
                await self._abort(key, upload_id)
            if _is_storage_failure(exc):
                log.warning("storage_write_failed", key=key, error=type(exc).__name__)
                raise StorageUnavailable() from exc
            raise

    async def _part(
        self, s3: S3Client, key: str, upload_id: str, number: int, body: bytearray
    ) -> dict[str, Any]:
        sent = await s3.upload_part(
            Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=bytes(body)
        )
        return {"ETag": sent["ETag"], "PartNumber": number}

    async def _abort(self, key: str, upload_id: str) -> None:
        try:
            s3 = await self._s3()
            await s3.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except Exception as exc:  # the bucket's lifecycle rule for incomplete uploads is the rest
            log.warning("storage_abort_failed", key=key, error=type(exc).__name__)

    async def read_chunks(self, key: str) -> AsyncIterator[bytes]:
        try:
            s3 = await self._s3()
            found = await s3.get_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            raise _read_error(exc, key) from exc
        async with found["Body"] as body:
            while chunk := await body.read(READ_CHUNK):
                yield chunk

    async def read(self, key: str) -> bytes:
        try:
            s3 = await self._s3()
            found = await s3.get_object(Bucket=self.bucket, Key=key)
            async with found["Body"] as body:
                data: bytes = await body.read()
            return data
        except Exception as exc:
            raise _read_error(exc, key) from exc

    async def delete(self, key: str) -> None:
        try:
            s3 = await self._s3()
            await s3.delete_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            if _is_storage_failure(exc):
                raise StorageUnavailable() from exc
            raise

    async def aclose(self) -> None:
        await self._stack.aclose()
        self._client = None


def _is_storage_failure(exc: BaseException) -> bool:
    """The SDK's errors (connection, timeout, a refusal by the server), not ours."""
    module = type(exc).__module__
    return module.startswith(("botocore", "aiobotocore", "aiohttp")) or isinstance(
        exc, OSError | TimeoutError
    )


def _read_error(exc: Exception, key: str) -> Exception:
    code = getattr(exc, "response", {}).get("Error", {}).get("Code")
    if code in {"NoSuchKey", "404"}:
        return StoredObjectMissing(key)
    if _is_storage_failure(exc):
        return StorageUnavailable()
    return exc


def new_key(room_id: int) -> str:
    """An unguessable object name, grouped by room."""
    return f"rooms/{room_id}/{secrets.token_urlsafe(18)}"
