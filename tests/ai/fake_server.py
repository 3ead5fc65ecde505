"""What the fake AI servers (tests/ai/fake_gemini.py, tests/ai/fake_openai.py) share: a Starlette
app under uvicorn in a background thread on a free 127.0.0.1 port, the list of recorded requests,
and two scripts of behaviours, one for streaming calls (the replies) and one for non-streaming
ones (the titles). Each request takes the next behaviour of its script; the last one repeats.

A fake subclasses `LoopbackServer` with its routes and its default behaviours; its handlers read
the body with `read_body`, append to `self.requests`, and take the request's behaviour with
`await self._next(request, stream)` (None after a `Hang`); a streamed reply that is `cut_short`
ends with what `self._cut_off(...)` yields.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, Protocol, Self, TypeVar

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import BaseRoute

from tests.servers import PromptServer


class _Recorded(Protocol):
    @property
    def stream(self) -> bool: ...


class _Ending(Protocol):
    """The fields of a fake's `Reply` that stop a stream short of its finish."""

    @property
    def error_event(self) -> Mapping[str, Any] | None: ...
    @property
    def break_after(self) -> bool: ...
    @property
    def stall_after(self) -> bool: ...


T = TypeVar("T")
A = TypeVar("A")  # a fake's answers: its behaviours but `Hang`
R = TypeVar("R", bound=_Recorded)  # a fake's recorded requests


@dataclass(frozen=True)
class Hang:
    """Accept the request and never answer (until the client leaves or the server stops)."""


class BrokenStream(Exception):
    """Raised inside a streaming response: uvicorn drops the connection mid-body."""


class _QuietBrokenStream(logging.Filter):
    """uvicorn logs the exception that drops a connection; for `BrokenStream` it is the point."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], BrokenStream))


logging.getLogger("uvicorn.error").addFilter(_QuietBrokenStream())


class Script(Generic[T]):
    def __init__(self, default: T) -> None:
        self._items: list[T] = [default]
        self._lock = threading.Lock()

    def set(self, items: Sequence[T]) -> None:
        assert items, "a script needs at least one behaviour"
        with self._lock:
            self._items = list(items)

    def take(self) -> T:
        with self._lock:
            return self._items.pop(0) if len(self._items) > 1 else self._items[0]


async def read_body(request: Request) -> Any:
    """The request's body as JSON, or as text when it is not JSON."""
    raw = await request.body()
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


def cut_short(reply: _Ending) -> bool:
    """Whether a streamed reply stops after its chunks without finishing."""
    return reply.error_event is not None or reply.break_after or reply.stall_after


class _Server(PromptServer):
    def __init__(self, config: uvicorn.Config, owner: LoopbackServer[Any, Any]) -> None:
        super().__init__(config)
        self.owner = owner

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self.owner._loop = asyncio.get_running_loop()
        self.owner._release = asyncio.Event()
        await super().startup(sockets)
        self.owner._ready.set()


class LoopbackServer(Generic[A, R]):
    """`routes` served on `url` once `start()`ed (or entered as a context manager) until
    `stop()`; `streamed` and `plain` are what the scripts answer until a test scripts them.
    `log_config` is handed to uvicorn: None leaves the test process's logging alone."""

    def __init__(
        self,
        name: str,
        routes: Sequence[BaseRoute],
        *,
        streamed: A | Hang,
        plain: A | Hang,
        log_config: dict[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.requests: list[R] = []
        self.streamed: Script[A | Hang] = Script(streamed)
        self.plain: Script[A | Hang] = Script(plain)
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._release: asyncio.Event | None = None
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind(("127.0.0.1", 0))
        self.port: int = self._socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            Starlette(routes=list(routes)),
            log_config=log_config,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
        )
        self._server = _Server(config, self)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )

    # --- control --------------------------------------------------------------------------------
    def start(self) -> Self:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError(f"the fake {self.name} server did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._release is not None:
            self._loop.call_soon_threadsafe(self._release.set)  # let hanging handlers end
        self._server.exit()
        self._thread.join(15)
        self._socket.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def script(self, *behaviours: A | Hang) -> None:
        """What the next streaming requests get, in order; the last one repeats."""
        self.streamed.set(behaviours)

    def script_plain(self, *behaviours: A | Hang) -> None:
        """What the next non-streaming requests get, in order; the last one repeats."""
        self.plain.set(behaviours)

    # --- what was asked -------------------------------------------------------------------------
    @property
    def streamed_requests(self) -> list[R]:
        """The streaming requests (the replies), oldest first."""
        return [r for r in self.requests if r.stream]

    @property
    def plain_requests(self) -> list[R]:
        """The non-streaming requests (the titles), oldest first."""
        return [r for r in self.requests if not r.stream]

    # --- for the handlers -----------------------------------------------------------------------
    async def _next(self, request: Request, stream: bool) -> A | None:
        """What the request gets, from the streaming script or the plain one; None for a `Hang`,
        once the client has gone or the server is stopping."""
        behaviour = (self.streamed if stream else self.plain).take()
        if isinstance(behaviour, Hang):
            await self._until_gone(request)
            return None
        return behaviour

    async def _until_gone(self, request: Request) -> None:
        """Wait until the client disconnects or the server is stopping."""
        assert self._release is not None

        async def disconnected() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass

        waiters = {
            asyncio.ensure_future(disconnected()),
            asyncio.ensure_future(self._release.wait()),
        }
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _cut_off(
        self, reply: _Ending, request: Request, sse: Callable[[Mapping[str, Any]], str]
    ) -> AsyncIterator[str]:
        """How a `cut_short` reply ends after its chunks: with an in-stream `{"error": ...}`
        event (as `sse` writes it), a dropped connection, or nothing until the client leaves."""
        if reply.error_event is not None:
            yield sse({"error": dict(reply.error_event)})
        elif reply.break_after:
            raise BrokenStream("the fake drops the connection mid-stream")
        elif reply.stall_after:
            await self._until_gone(request)
