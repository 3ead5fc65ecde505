"""The SSE response (core/sse.py): the bytes sse-starlette sent, one task per open stream, pings
from the stream's own loop, and a clean end when the client leaves or the server shuts down.

The stream is driven here as the ASGI server drives it (a `send` into a queue, a `receive` that
answers `http.disconnect` once the client has gone), since a test client buffers whole bodies."""

from __future__ import annotations

import asyncio
import re
import signal
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gemini_backend.ai.base import Finished, Usage
from gemini_backend.chat import replies
from gemini_backend.core.sse import EventStreamResponse, ServerSentEvent, end_streams
from tests.helpers import bearer, drop_reply_stream, read_sse, sign_in

FINAL = {"type": "http.response.body", "body": b"", "more_body": False}
PING = re.compile(rb": ping - \d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)?\+00:00\r\n\r\n")
SSE_HEADERS = [
    (b"cache-control", b"no-store"),
    (b"connection", b"keep-alive"),
    (b"x-accel-buffering", b"no"),
    (b"content-type", b"text/event-stream; charset=utf-8"),
]


class Connection:
    """One client connection, as the application sees it."""

    def __init__(self) -> None:
        self.sent: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.gone = asyncio.Event()
        self.requested = False

    async def receive(self) -> dict[str, Any]:
        if not self.requested:
            self.requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        await self.sent.put(message)

    async def next(self) -> dict[str, Any]:
        return await asyncio.wait_for(self.sent.get(), 10)

    async def next_body(self) -> bytes:
        message = await self.next()
        assert message["type"] == "http.response.body", message
        assert message["more_body"] is True, message
        body: bytes = message["body"]
        return body

    def rest(self) -> list[dict[str, Any]]:
        """What was sent and not read yet (once the call has returned)."""
        messages = []
        while not self.sent.empty():
            messages.append(self.sent.get_nowait())
        return messages


def get(path: str, headers: dict[str, str] | None = None, method: str = "GET") -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver")]
        + [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
        "client": ("198.51.100.7", 40000),
        "server": ("testserver", 80),
    }


# The wire format -----------------------------------------------------------------------------


# What sse-starlette 3.7.0's ServerSentEvent.encode() gave for the same fields.
@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"comment": "stream open"}, b": stream open\r\n\r\n"),
        (
            {"data": '{"text": "hi"}', "event": "delta", "id": "1"},
            b'id: 1\r\nevent: delta\r\ndata: {"text": "hi"}\r\n\r\n',
        ),
        (
            {"data": "one\ntwo\r\nthree\rfour", "event": "multi\nline", "id": "7\r\n-0"},
            b"id: 7-0\r\nevent: multiline\r\n"
            b"data: one\r\ndata: two\r\ndata: three\r\ndata: four\r\n\r\n",
        ),
        (
            {"comment": "a\nb", "data": "", "retry": 3000},
            b": a\r\n: b\r\ndata: \r\nretry: 3000\r\n\r\n",
        ),
        ({"data": "trailing\n"}, b"data: trailing\r\ndata: \r\n\r\n"),
        ({}, b"\r\n"),
    ],
)
def test_events_are_encoded_as_sse_starlette_did(fields, expected):
    assert ServerSentEvent(**fields).encode() == expected


def _without_request_id(start: dict[str, Any]) -> list[tuple[bytes, bytes]]:
    return [(k, v) for k, v in start["headers"] if k != b"x-request-id"]


# The start message and body chunks sse-starlette (3.7.0, `ping=15`) sent for a reply replayed
# from the database, captured before the switch; everything in them is fixed by the test setup.
REPLAYED_TEXT = r"Demo reply (context: 0 earlier messages []) to: \"hi\nthere\""
REPLAYED = [
    b": stream open\r\n\r\n",
    b'id: db-1\r\nevent: delta\r\ndata: {"text": "' + REPLAYED_TEXT.encode() + b'"}\r\n\r\n',
    b'id: db-2\r\nevent: done\r\ndata: {"id":2,"chatroom_id":1,"role":"assistant","content":"'
    + REPLAYED_TEXT.encode()
    + b'","status":"completed","error":null,"finish_reason":"stop","usage":{"prompt_tokens":2,'
    b'"output_tokens":15,"thinking_tokens":0,"cached_tokens":0},"model":"demo","reply_to":1,"parent_id":1,'
    b'"sibling_ids":[2],"parts":[{"type":"text","text":"'
    + REPLAYED_TEXT.encode()
    + b'"}],"created_at":"2026-11-22T10:00:00Z","completed_at":"2026-11-22T10:00:00Z"}\r\n\r\n',
]
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"content-security-policy", b"frame-ancestors 'none'"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


async def _read_all(app, path: str, headers: dict[str, str]) -> list[dict[str, Any]]:
    connection = Connection()
    await asyncio.wait_for(app(get(path, headers), connection.receive, connection.send), 20)
    return connection.rest()


async def test_the_wire_format_is_unchanged(client, app):
    auth = bearer(await sign_in(client))
    room = (await client.post("/chatroom", json={"name": "r"}, headers=auth)).json()["id"]
    receipt = (
        await client.post(f"/chatroom/{room}/message", json={"content": "hi\nthere"}, headers=auth)
    ).json()
    events = await read_sse(client, receipt["stream_url"], auth)

    # The reply's own stream (ids from the stream store: "1", "2" embedded, Redis ids otherwise).
    live = await _read_all(app, receipt["stream_url"], auth)
    assert live[0]["type"] == "http.response.start"
    assert live[0]["status"] == 200
    assert _without_request_id(live[0]) == SSE_HEADERS + SECURITY_HEADERS
    # The bytes are sse-starlette's; the chunks differ: the events of one read are one chunk,
    # and the final event ends the body in its own chunk (no empty chunk after it).
    assert b"".join(m["body"] for m in live[1:]) == b": stream open\r\n\r\n" + b"".join(
        f"id: {id_}\r\nevent: {event}\r\ndata: {data}\r\n\r\n".encode()
        for id_, event, data in events
    )
    assert [m["more_body"] for m in live[1:]] == [True] * (len(live) - 2) + [False]
    done_id, done_event, done_data = events[-1]
    assert done_event == "done"
    assert live[-1]["body"].endswith(
        f"id: {done_id}\r\nevent: done\r\ndata: {done_data}\r\n\r\n".encode()
    )

    # Replayed from the database: every byte fixed.
    await drop_reply_stream(app, receipt["reply_id"])
    replayed = await _read_all(app, receipt["stream_url"], auth)
    assert _without_request_id(replayed[0]) == SSE_HEADERS + SECURITY_HEADERS
    assert replayed[1:] == [
        {"type": "http.response.body", "body": body, "more_body": body is not REPLAYED[-1]}
        for body in REPLAYED
    ]


# One task per stream -------------------------------------------------------------------------


async def test_an_open_stream_is_the_request_task_alone():
    release = asyncio.Event()
    finished = asyncio.Event()

    async def events() -> AsyncIterator[ServerSentEvent | None]:
        try:
            yield ServerSentEvent(comment="stream open")
            await release.wait()
            yield ServerSentEvent("bye", event="done", id="1")
        finally:
            finished.set()

    connection = Connection()
    before = len(asyncio.all_tasks())
    call = asyncio.create_task(
        EventStreamResponse(events())(get("/s"), connection.receive, connection.send)
    )
    start = await connection.next()
    assert start["headers"] == SSE_HEADERS
    assert await connection.next_body() == b": stream open\r\n\r\n"
    # sse-starlette ran four more here (the generator, pings, disconnects, shutdown).
    assert len(asyncio.all_tasks()) == before + 1
    release.set()
    assert await connection.next_body() == b"id: 1\r\nevent: done\r\ndata: bye\r\n\r\n"
    await asyncio.wait_for(call, 10)
    assert connection.rest() == [FINAL]
    assert finished.is_set()


async def test_a_failed_send_ends_the_stream_and_closes_the_iterator():
    closed = asyncio.Event()

    async def events() -> AsyncIterator[ServerSentEvent | None]:
        try:
            while True:
                yield ServerSentEvent("x")
        finally:
            closed.set()

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            raise OSError("connection closed")  # servers of ASGI spec 2.4
        sent.append(message)

    await asyncio.wait_for(EventStreamResponse(events())(get("/s"), Connection().receive, send), 10)
    assert closed.is_set()
    assert [m["type"] for m in sent] == ["http.response.start"]


async def test_an_error_of_the_iterator_propagates_without_the_final_chunk():
    async def events() -> AsyncIterator[ServerSentEvent | None]:
        yield ServerSentEvent(comment="stream open")
        raise RuntimeError("boom")

    connection = Connection()
    with pytest.raises(RuntimeError, match="boom"):
        await EventStreamResponse(events())(get("/s"), connection.receive, connection.send)
    assert [m.get("body") for m in connection.rest()] == [None, b": stream open\r\n\r\n"]


async def test_head_sends_the_headers_only():
    started = False

    async def events() -> AsyncIterator[ServerSentEvent | None]:
        nonlocal started
        started = True
        yield ServerSentEvent(comment="never")

    connection = Connection()
    await EventStreamResponse(events())(
        get("/s", method="HEAD"), connection.receive, connection.send
    )
    assert connection.rest() == [
        {"type": "http.response.start", "status": 200, "headers": SSE_HEADERS},
        FINAL,
    ]
    assert not started


async def test_end_streams_ends_a_waiting_stream_cleanly_and_later_ones_at_once():
    finished = asyncio.Event()

    async def waiting() -> AsyncIterator[ServerSentEvent | None]:
        try:
            yield ServerSentEvent(comment="stream open")
            await asyncio.Event().wait()  # never set: only the shutdown ends this wait
            yield ServerSentEvent(comment="unreachable")
        finally:
            finished.set()

    connection = Connection()
    call = asyncio.create_task(
        EventStreamResponse(waiting())(get("/s"), connection.receive, connection.send)
    )
    await connection.next()
    assert await connection.next_body() == b": stream open\r\n\r\n"
    end_streams()
    await asyncio.wait_for(call, 10)
    assert connection.rest() == [FINAL]
    assert finished.is_set()

    later = Connection()
    await asyncio.wait_for(EventStreamResponse(waiting())(get("/s"), later.receive, later.send), 10)
    assert [m.get("body") for m in later.rest()] == [None, b""]


async def test_a_swallowed_shutdown_cancellation_is_delivered_again():
    swallowed = asyncio.Event()

    async def stubborn() -> AsyncIterator[ServerSentEvent | None]:
        yield ServerSentEvent(comment="stream open")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            swallowed.set()  # as Python 3.11's wait_for does when its future is done as well
        await asyncio.Event().wait()  # only a second cancellation ends this
        yield ServerSentEvent(comment="unreachable")

    connection = Connection()
    call = asyncio.create_task(
        EventStreamResponse(stubborn())(get("/s"), connection.receive, connection.send)
    )
    await connection.next()
    assert await connection.next_body() == b": stream open\r\n\r\n"
    end_streams()
    await asyncio.wait_for(call, 10)
    assert swallowed.is_set()
    assert connection.rest() == [FINAL]
    assert call.cancelling() == 0  # the shutdown's cancellations were taken back


async def test_a_cancellation_that_is_not_the_shutdowns_propagates():
    async def waiting() -> AsyncIterator[ServerSentEvent | None]:
        yield ServerSentEvent(comment="stream open")
        await asyncio.Event().wait()
        yield ServerSentEvent(comment="unreachable")

    connection = Connection()
    call = asyncio.create_task(
        EventStreamResponse(waiting())(get("/s"), connection.receive, connection.send)
    )
    await connection.next()
    assert await connection.next_body() == b": stream open\r\n\r\n"
    call.cancel()  # as uvicorn's graceful timeout does
    with pytest.raises(asyncio.CancelledError):
        await call
    assert connection.rest() == []


# Reply streams, end to end -------------------------------------------------------------------


class StalledProvider:
    """Starts a reply and then produces nothing until the test lets it finish."""

    name = "stalled"
    model = "stalled-1"

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.gate = asyncio.Event()

    async def stream(self, conversation, options):
        self.started.set()
        await self.gate.wait()
        yield Finished("stop", Usage(1, 0, 0))

    async def title(self, first_message: str) -> str:
        return "Stalled"


@pytest.fixture
async def stalled(app) -> AsyncIterator[StalledProvider]:
    provider = StalledProvider()
    generators = [app.state.services.pipeline.generator]
    if getattr(app.state, "worker", None) is not None:
        generators.append(app.state.worker.pipeline.generator)
    for generator in generators:
        generator.provider = provider
    yield provider
    provider.gate.set()  # the reply ends before the app shuts down


async def _stalled_stream(client, stalled: StalledProvider) -> tuple[str, dict[str, str]]:
    auth = bearer(await sign_in(client))
    room = (await client.post("/chatroom", json={"name": "r"}, headers=auth)).json()["id"]
    response = await client.post(f"/chatroom/{room}/message", json={"content": "hi"}, headers=auth)
    assert response.status_code == 202, response.text
    await asyncio.wait_for(stalled.started.wait(), 10)
    return response.json()["stream_url"], auth


async def test_a_quiet_stream_is_pinged_and_ends_when_the_client_leaves(
    client, app, stalled, monkeypatch
):
    monkeypatch.setattr(replies, "PING_SECONDS", 0.05)
    url, auth = await _stalled_stream(client, stalled)
    connection = Connection()
    call = asyncio.create_task(app(get(url, auth), connection.receive, connection.send))
    assert (await connection.next())["status"] == 200
    assert await connection.next_body() == b": stream open\r\n\r\n"
    # Nothing happens on the reply: what comes next can only be the stream's own ping.
    assert PING.fullmatch(await connection.next_body())
    assert PING.fullmatch(await connection.next_body())
    # The client hangs up. No send fails (uvicorn drops a send to a closed connection), yet
    # the stream notices at its next quiet read and ends.
    connection.gone.set()
    await asyncio.wait_for(call, 10)
    rest = connection.rest()
    assert rest[-1] == FINAL
    assert all(PING.fullmatch(m["body"]) for m in rest[:-1])


class FakeUvicornServer:
    """What the stream looks for: uvicorn installs its bound `handle_exit` for SIGTERM."""

    def __init__(self) -> None:
        self.should_exit = False

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.should_exit = True


async def test_a_server_shutdown_ends_a_waiting_stream_cleanly(client, app, stalled, monkeypatch):
    # Reads that would wait a minute: only the shutdown can end this stream within the test.
    monkeypatch.setattr(replies, "READ_BLOCK_MS", 60_000)
    monkeypatch.setattr(replies, "PING_SECONDS", 60.0)
    url, auth = await _stalled_stream(client, stalled)
    server = FakeUvicornServer()
    previous = signal.signal(signal.SIGTERM, server.handle_exit)
    try:
        connection = Connection()
        call = asyncio.create_task(app(get(url, auth), connection.receive, connection.send))
        assert (await connection.next())["status"] == 200
        assert await connection.next_body() == b": stream open\r\n\r\n"
        signal.raise_signal(signal.SIGTERM)
        assert server.should_exit
        await asyncio.wait_for(call, 10)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert connection.rest() == [FINAL]  # ended, with the final chunk: not truncated
    notices = getattr(app.state.services.reply_streams, "_notices", None)
    if notices is not None:  # Redis: the stream's waiting read has let go of its channel
        assert all(not channel.listeners for channel in notices._channels.values())
