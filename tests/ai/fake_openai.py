"""A small OpenAI-compatible server on loopback for tests: `POST /v1/chat/completions`, plain
HTTP, the real JSON and SSE shapes (role chunk, content chunks, finish chunk, usage chunk when
`stream_options.include_usage` is asked, `data: [DONE]`).

It runs a Starlette app under uvicorn in a background thread on a free 127.0.0.1 port, records
every request, and is scripted per test: `fake.script(...)` for streaming calls (the replies),
`fake.script_plain(...)` for non-streaming ones (the titles). Each request takes the next
behaviour of its script; the last one repeats.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


# --- behaviours ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Reply:
    """A completion. Streamed: one chunk per item of `chunks`; `break_after` ends the
    connection after them (no finish, no [DONE]); `stall_after` sends nothing more until the
    client gives up; `error_event` sends an in-stream `{"error": ...}` after them;
    `done_early` sends `[DONE]` right after them, with no finish reason."""

    chunks: Sequence[str] = ("Hello", " from", " the fake.")
    finish_reason: str = "stop"
    prompt_tokens: int = 11
    completion_tokens: int = 7
    reasoning_tokens: int | None = None
    break_after: bool = False
    stall_after: bool = False
    error_event: Mapping[str, Any] | None = None
    done_early: bool = False


@dataclass(frozen=True)
class Fail:
    """An error response with OpenAI's error body."""

    status: int
    message: str = "Something went wrong."
    type: str | None = "server_error"
    code: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Hang:
    """Accept the request and never answer (until the client leaves or the server stops)."""


Behaviour = Reply | Fail | Hang


def rate_limited(**headers: str) -> Fail:
    return Fail(
        429,
        "Rate limit reached for requests per minute. Please try again in 10ms.",
        type="requests",
        code="rate_limit_exceeded",
        headers=headers,
    )


def quota_exhausted() -> Fail:
    return Fail(
        429,
        "You exceeded your current quota, please check your plan and billing details.",
        type="insufficient_quota",
        code="insufficient_quota",
    )


def server_error(status: int = 500) -> Fail:
    return Fail(status, "The server had an error while processing your request.")


def bad_request(message: str = "Invalid 'messages': unknown role.") -> Fail:
    return Fail(400, message, type="invalid_request_error", code="invalid_value")


# --- the recording ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any

    @property
    def stream(self) -> bool:
        return isinstance(self.body, dict) and self.body.get("stream") is True


class Script:
    def __init__(self, default: Behaviour) -> None:
        self._items: list[Behaviour] = [default]
        self._lock = threading.Lock()

    def set(self, items: Sequence[Behaviour]) -> None:
        assert items, "a script needs at least one behaviour"
        with self._lock:
            self._items = list(items)

    def take(self) -> Behaviour:
        with self._lock:
            return self._items.pop(0) if len(self._items) > 1 else self._items[0]


class BrokenStream(Exception):
    """Raised inside a streaming response: uvicorn drops the connection mid-body."""


class _QuietBrokenStream(logging.Filter):
    """uvicorn logs the exception that drops a connection; for `BrokenStream` it is the point."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], BrokenStream))


logging.getLogger("uvicorn.error").addFilter(_QuietBrokenStream())


# --- the server ---------------------------------------------------------------------------------
class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, fake: FakeOpenAI) -> None:
        super().__init__(config)
        self.fake = fake

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self.fake._loop = asyncio.get_running_loop()
        self.fake._release = asyncio.Event()
        await super().startup(sockets)
        self.fake._ready.set()


class FakeOpenAI:
    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.streamed = Script(Reply())
        self.plain = Script(Reply(chunks=['"Paris Trip Ideas."']))
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._release: asyncio.Event | None = None
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind(("127.0.0.1", 0))
        self.port: int = self._socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        app = Starlette(routes=[Route("/v1/chat/completions", self._completions, methods=["POST"])])
        config = uvicorn.Config(
            app,
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
    def start(self) -> FakeOpenAI:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the fake OpenAI server did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._release is not None:
            self._loop.call_soon_threadsafe(self._release.set)  # let hanging handlers end
        self._server.should_exit = True
        self._thread.join(15)
        self._socket.close()

    def script(self, *behaviours: Behaviour) -> None:
        """What the next streaming requests get, in order; the last one repeats."""
        self.streamed.set(behaviours)

    def script_plain(self, *behaviours: Behaviour) -> None:
        """What the next non-streaming requests get, in order; the last one repeats."""
        self.plain.set(behaviours)

    @property
    def completions(self) -> list[Recorded]:
        """The streaming chat completion requests (the replies), oldest first."""
        return [r for r in self.requests if r.stream]

    @property
    def plain_completions(self) -> list[Recorded]:
        """The non-streaming chat completion requests (the titles), oldest first."""
        return [r for r in self.requests if not r.stream]

    # --- the endpoint ---------------------------------------------------------------------------
    async def _completions(self, request: Request) -> Response:
        raw = await request.body()
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = raw.decode(errors="replace")
        self.requests.append(
            Recorded(request.method, request.url.path, dict(request.headers), body)
        )
        if not isinstance(body, dict) or not body.get("model") or not body.get("messages"):
            return _error(
                Fail(400, "'model' and 'messages' are required.", "invalid_request_error")
            )
        stream = body.get("stream") is True
        if body.get("stream_options") is not None and not stream:
            return _error(
                Fail(400, "stream_options is only allowed with stream.", "invalid_request_error")
            )
        behaviour = (self.streamed if stream else self.plain).take()
        if isinstance(behaviour, Fail):
            return _error(behaviour)
        if isinstance(behaviour, Hang):
            await self._until_gone(request)
            return Response(status_code=503)
        model = str(body["model"])
        if not stream:
            return JSONResponse(_completion(behaviour, model))
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return StreamingResponse(
            self._events(behaviour, model, include_usage, request),
            media_type="text/event-stream",
        )

    async def _events(
        self, reply: Reply, model: str, include_usage: bool, request: Request
    ) -> AsyncIterator[str]:
        base = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "fp_fake",
        }
        if include_usage:
            base["usage"] = None

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> str:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return _sse({**base, "choices": [choice]})

        yield chunk({"role": "assistant", "content": "", "refusal": None})
        for text in reply.chunks:
            yield chunk({"content": text})
        if reply.error_event is not None:
            yield _sse({"error": dict(reply.error_event)})
            return
        if reply.break_after:
            raise BrokenStream("the fake drops the connection mid-stream")
        if reply.stall_after:
            await self._until_gone(request)
            return
        if reply.done_early:
            yield "data: [DONE]\n\n"
            return
        yield chunk({}, reply.finish_reason)
        if include_usage:
            yield _sse({**base, "choices": [], "usage": _usage(reply)})
        yield "data: [DONE]\n\n"

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


def _sse(payload: Mapping[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def _usage(reply: Reply) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "total_tokens": reply.prompt_tokens + reply.completion_tokens,
    }
    if reply.reasoning_tokens is not None:
        usage["completion_tokens_details"] = {"reasoning_tokens": reply.reasoning_tokens}
    return usage


def _completion(reply: Reply, model: str) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_fake",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(reply.chunks), "refusal": None},
                "logprobs": None,
                "finish_reason": reply.finish_reason,
            }
        ],
        "usage": _usage(reply),
    }


def _error(fail: Fail) -> JSONResponse:
    body = {"error": {"message": fail.message, "type": fail.type, "param": None, "code": fail.code}}
    return JSONResponse(body, status_code=fail.status, headers=dict(fail.headers))
