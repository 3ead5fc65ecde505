"""Server-Sent Events: the wire format, and a streaming response that holds an open stream with
the request's own task and nothing else.

Why not sse-starlette's `EventSourceResponse`: it runs a task group of about four tasks per
response (the generator, pings, a disconnect listener, a shutdown watcher), which made an open
stream cost about 70 KB. `EventStreamResponse` does the same work from the one task that
already serves the request:

- **Events.** The body comes from an async iterator of `ServerSentEvent | None` (or a tuple of
  events ready together), one body chunk per item, byte for byte what sse-starlette 3.x sends
  (`\\r\\n` line endings, a multi-line value split into several `data:` lines, comments as
  `: ...` lines). `None` means "nothing new yet": nothing is sent, but the response gets to
  look at the client (below).
- **Pings.** The iterator sends them itself (`ping_event()`, `: ping - <UTC time>`, the format of
  sse-starlette's default ping): it is the one that waits, so it bounds its waits by the time
  the next ping is due and yields the ping from the same loop. A ping timer of the response's
  own would have to interrupt the iterator mid-await (an interrupted async generator cannot be
  resumed) or run as another task, which is what this module avoids.
- **Client gone.** uvicorn (0.54, HTTP spec_version 2.3) does not raise when a body is sent to
  a closed connection: the send is silently dropped. So before each send, and at each `None`,
  the response asks `receive()` without waiting (it runs the coroutine one step: a finished
  step is a message, `http.disconnect` when the client is gone; a step that would wait means
  nothing has arrived, and the coroutine is closed, which unregisters its waiter). An iterator
  that yields at least once per read period (reply streams: about every 5 s, see
  `chat/replies.py`) thus notices a closed connection within one read period. A send that
  raises `OSError` (servers of ASGI spec 2.4) ends the stream the same way.
- **Server shutdown.** Each open stream registers its task with its event loop. A timer
  callback (no task; armed only while streams are open) looks every 0.5 s for uvicorn's
  `Server.should_exit`, found as sse-starlette finds it, through the bound `handle_exit` that
  uvicorn installs as the SIGTERM handler. On shutdown it cancels every registered task where it
  waits (the iterator's read, or a send), again every 0.5 s for a stream still open (some code
  swallows a cancellation, as anyio's level cancellation in sse-starlette allowed for), and the
  response takes its own cancellations back (`Task.uncancel`) and ends the stream cleanly; a
  cancellation from anyone else (uvicorn's graceful timeout) propagates. `end_streams()` does
  the same without uvicorn. uvicorn only sends the lifespan shutdown after open requests have
  finished, so the lifespan cannot do this.
- **Always a clean end.** With an event marked `last`, the body ends in that event's write;
  after the iterator's end, a client gone or a shutdown, the final empty body chunk is sent.
  So a client never sees a truncated chunked response; an EventSource then reconnects with
  `Last-Event-ID` (to another process) and resumes. An error from the iterator
  propagates instead (the server closes the connection, the client reconnects as well).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import weakref
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from starlette.background import BackgroundTask
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

SEPARATOR = "\r\n"
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    """One event (or comment) of a `text/event-stream`; `encode()` gives its bytes."""

    data: str | None = None
    event: str | None = None
    id: str | None = None
    retry: int | None = None
    comment: str | None = None
    # The stream's last event: it goes out with the end of the body, in one write.
    last: bool = False

    def encode(self) -> bytes:
        lines: list[str] = []
        if self.comment is not None:
            lines.extend(f": {line}" for line in _LINE_BREAK.split(self.comment))
        if self.id is not None:
            lines.append("id: " + _LINE_BREAK.sub("", self.id))
        if self.event is not None:
            lines.append("event: " + _LINE_BREAK.sub("", self.event))
        if self.data is not None:
            lines.extend(f"data: {line}" for line in _LINE_BREAK.split(self.data))
        if self.retry is not None:
            lines.append(f"retry: {self.retry}")
        lines.append("")  # the blank line that ends the event
        return (SEPARATOR.join(lines) + SEPARATOR).encode()


def ping_event() -> ServerSentEvent:
    """The keep-alive comment, `: ping - 2026-11-22 10:00:00.123456+00:00`."""
    return ServerSentEvent(comment=f"ping - {datetime.now(UTC)}")


# An item of a stream: an event, events ready together (one body chunk, one write), or None.
EventItem = ServerSentEvent | tuple[ServerSentEvent, ...] | None
EventSource = AsyncGenerator[EventItem, None]

MEDIA_TYPE = "text/event-stream"
# The headers sse-starlette sends, in its order. Shared (immutable) by every response; each one
# has its own list, which middleware may extend.
HEADERS = (
    (b"cache-control", b"no-store"),
    (b"connection", b"keep-alive"),
    (b"x-accel-buffering", b"no"),
    (b"content-type", f"{MEDIA_TYPE}; charset=utf-8".encode()),
)


class EventStreamResponse(Response):
    """A `text/event-stream` response fed by `events` (see the module docstring).

    The media type is set per instance, as sse-starlette does: as a class attribute, FastAPI
    would also list a route's error bodies (`responses` models) under `text/event-stream` in
    the OpenAPI document. Routes document their `text/event-stream` 200 in `responses`."""

    def __init__(
        self, events: EventSource, status_code: int = 200, background: BackgroundTask | None = None
    ) -> None:
        self.events = events
        self.status_code = status_code
        self.background = background
        self.media_type = MEDIA_TYPE
        self.raw_headers = list(HEADERS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        streams = _open_streams()
        task = asyncio.current_task()
        assert task is not None
        ended = False
        try:
            await self._start(send)
            # HEAD: the headers only; the stream never starts (it would never end).
            if scope.get("method") != "HEAD" and not streams.ending:
                streams.add(task)
                try:
                    async for event in self.events:
                        if streams.ending or _client_gone(receive):
                            break
                        if event is None:
                            continue
                        if isinstance(event, tuple):
                            body = b"".join(e.encode() for e in event)
                            last = bool(event) and event[-1].last
                        else:
                            body, last = event.encode(), event.last
                        try:
                            await send(
                                {"type": "http.response.body", "body": body, "more_body": not last}
                            )
                        except OSError:
                            break  # a closed connection (servers of ASGI spec 2.4)
                        if last:
                            ended = True  # the body ended with it
                            break
                except asyncio.CancelledError:
                    # The shutdown's own cancellation ends the stream cleanly; anyone else's
                    # (uvicorn's graceful timeout) goes on.
                    if not streams.withdraw(task) or task.cancelling():
                        raise
                finally:
                    streams.withdraw(task)
        finally:
            # Runs the iterator's cleanup when it is left suspended (client gone, shutdown
            # during a send); a no-op when it has finished.
            await self.events.aclose()
        if not ended:
            with contextlib.suppress(OSError):  # the client may be gone already
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        if self.background is not None:
            await self.background()

    async def _start(self, send: Send) -> None:
        # The server writes the headers out; the response does not keep them (middleware adds
        # its own to the list: about 1 KB for as long as the stream stays open).
        headers, self.raw_headers = self.raw_headers, []
        await send({"type": "http.response.start", "status": self.status_code, "headers": headers})


def _client_gone(receive: Receive) -> bool:
    """Whether `receive()` has `http.disconnect` ready, found without waiting for it."""
    steps = receive().__await__()
    try:
        for _ in range(8):
            if steps.send(None) is not None:
                return False  # it waits on a future: nothing has arrived, the client is there
            # A bare yield (a `sleep(0)` checkpoint): step on.
        return False
    except StopIteration as finished:
        message = finished.value
        return bool(message["type"] == "http.disconnect")
    finally:
        steps.close()  # a coroutine left waiting: its cleanup drops its waiter


class _OpenStreams:
    """The open streams of one event loop (each its task, with the number of times the
    shutdown cancelled it), and the shutdown check that ends them."""

    POLL_SECONDS = 0.5

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.ending = False
        self.tasks: dict[asyncio.Task[Any], int] = {}
        self.timer: asyncio.TimerHandle | None = None

    def add(self, task: asyncio.Task[Any]) -> None:
        self.tasks[task] = 0
        if self.timer is None:
            self.timer = self.loop.call_later(self.POLL_SECONDS, self._poll)

    def withdraw(self, task: asyncio.Task[Any]) -> int:
        """Forget `task`, taking back the cancellations the shutdown sent it (delivered or
        swallowed: none can be pending while the task runs); their number."""
        cancels = self.tasks.pop(task, 0)
        for _ in range(cancels):
            task.uncancel()
        if not self.tasks and self.timer is not None:
            self.timer.cancel()
            self.timer = None
        return cancels

    def end_all(self) -> None:
        self.ending = True
        for task in self.tasks:
            self.tasks[task] += 1
            task.cancel("server shutdown")
        if self.tasks and self.timer is None:
            self.timer = self.loop.call_later(self.POLL_SECONDS, self._poll)

    def _poll(self) -> None:
        self.timer = None
        if self.ending or _server_exiting():
            # Again for streams still open: some code swallows a cancellation (Python 3.11's
            # `asyncio.wait_for` when what it waits for completes at the same moment).
            self.end_all()
        elif self.tasks:
            self.timer = self.loop.call_later(self.POLL_SECONDS, self._poll)


_by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _OpenStreams] = (
    weakref.WeakKeyDictionary()
)


def _open_streams() -> _OpenStreams:
    loop = asyncio.get_running_loop()
    streams = _by_loop.get(loop)
    if streams is None:
        streams = _by_loop[loop] = _OpenStreams(loop)
    return streams


def _server_exiting() -> bool:
    """uvicorn's `Server.should_exit`: uvicorn installs its bound `handle_exit` as the SIGTERM
    handler (also in each process of `--workers N`), which sets it on SIGTERM and SIGINT."""
    server = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
    return getattr(server, "should_exit", False) is True


def end_streams() -> None:
    """End every open stream of the running event loop cleanly, and any opened after this: for
    a server other than uvicorn, or to end the streams before shutting down."""
    _open_streams().end_all()
