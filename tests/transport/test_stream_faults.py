"""Reply streams when Redis stops answering, and the cap on a user's open streams.

A Redis that hangs (a loopback proxy that forwards nothing and closes nothing) gives a clean
503 before a stream starts and a clean end after: never an exception inside a started response,
never a stream held open waiting on Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import make_url

from gemini_backend.chat import replies
from tests.chat.test_event_stream import Connection, get
from tests.conftest import BACKEND, TEST_REDIS_URL
from tests.helpers import bearer, insert_queued_reply, read_sse, sign_in
from tests.reliability.fault_proxy import FaultProxy

REDIS_TIMEOUT = 2  # REDIS_SOCKET_TIMEOUT_SECONDS in these tests (its minimum)


async def _room_with_reply(client: httpx.AsyncClient, headers: dict[str, str]) -> tuple[int, int]:
    room = (await client.post("/chatroom", json={"name": "r"}, headers=headers)).json()["id"]
    sent = await client.post(f"/chatroom/{room}/message", json={"content": "hi"}, headers=headers)
    assert sent.status_code == 202, sent.text
    return room, sent.json()["reply"]["id"]


def _stream_path(room: int, reply: int) -> str:
    return f"/chatroom/{room}/messages/{reply}/stream"


async def _open(app: Any, path: str, headers: dict[str, str]) -> tuple[Connection, asyncio.Task]:
    """A stream driven as the server drives it, once its first chunk is out."""
    connection = Connection()
    task = asyncio.create_task(app(get(path, headers), connection.receive, connection.send))
    start = await connection.next()
    assert (start["type"], start["status"]) == ("http.response.start", 200), start
    assert await connection.next_body() == b": stream open\r\n\r\n"
    return connection, task


@pytest.fixture
def redis_proxy() -> Iterator[FaultProxy]:
    if BACKEND != "production":
        pytest.skip("Redis faults: production mode")
    redis = make_url(TEST_REDIS_URL)
    proxy = FaultProxy(redis.port or 6379, redis.host or "127.0.0.1").start()
    try:
        yield proxy
    finally:
        proxy.close()


class TestRedisHangs:
    @pytest.fixture
    def settings_overrides(self, redis_proxy):
        url = make_url(TEST_REDIS_URL).set(host="127.0.0.1", port=redis_proxy.port)
        return {
            "redis_url": str(url),
            "redis_socket_timeout_seconds": REDIS_TIMEOUT,
            "redis_pool_timeout_seconds": 1,
        }

    async def test_503_before_a_stream_and_a_clean_end_after(
        self, app, client, redis_proxy, monkeypatch
    ):
        tokens = await sign_in(client)
        headers = bearer(tokens)
        room, reply = await _room_with_reply(client, headers)
        events = await read_sse(client, _stream_path(room, reply), headers)
        assert events[-1][1] == "done"
        # A reply nobody works on: its stream stays open, reading Redis.
        monkeypatch.setattr(replies, "READ_BLOCK_MS", 200)
        message = await client.get(f"/chatroom/{room}/messages/{reply}", headers=headers)
        queued = await insert_queued_reply(app, room, message.json()["reply_to"])
        connection, streaming = await _open(app, _stream_path(room, queued), headers)

        redis_proxy.silence()
        try:
            started = time.monotonic()
            response = await client.get(_stream_path(room, reply), headers=headers)
            assert response.status_code == 503, response.text
            assert response.json()["code"] == "service_unavailable"
            assert response.headers["Retry-After"]
            assert time.monotonic() - started < 3 * REDIS_TIMEOUT

            await asyncio.wait_for(streaming, 4 * REDIS_TIMEOUT)  # ended, without an exception
            assert connection.rest()[-1] == {
                "type": "http.response.body",
                "body": b"",
                "more_body": False,
            }
        finally:
            redis_proxy.restore()
        # Redis back: the stream resumes where it was.
        again = await read_sse(client, _stream_path(room, reply), headers)
        assert again == events


class TestStreamCap:
    @pytest.fixture
    def settings_overrides(self):
        return {"max_streams_per_user": 2}

    async def test_a_users_open_streams_are_capped(self, app, client, monkeypatch):
        monkeypatch.setattr(replies, "READ_BLOCK_MS", 100)  # a closed client noticed soon
        tokens = await sign_in(client)
        headers = bearer(tokens)
        room, reply = await _room_with_reply(client, headers)
        # Replies answering no message: one user message has one reply in progress at most.
        queued = [await insert_queued_reply(app, room, None) for _ in range(2)]
        opened = [await _open(app, _stream_path(room, q), headers) for q in queued]

        refused = await client.get(_stream_path(room, queued[0]), headers=headers)
        assert refused.status_code == 429, refused.text
        assert refused.json()["code"] == "too_many_streams"
        assert int(refused.headers["Retry-After"]) > 0
        # Another user is not affected.
        other = bearer(await sign_in(client))
        other_room, other_reply = await _room_with_reply(client, other)
        assert (await read_sse(client, _stream_path(other_room, other_reply), other))[-1][1] == (
            "done"
        )

        connection, task = opened[0]
        connection.gone.set()  # the client leaves: its slot is given back
        await asyncio.wait_for(task, 10)
        events = await read_sse(client, _stream_path(room, reply), headers)
        assert events[-1][1] == "done"
        for connection, task in opened[1:]:
            connection.gone.set()
            await asyncio.wait_for(task, 10)
        assert app.state.services.stream_slots.open_streams(tokens["user"]["id"]) == 0
