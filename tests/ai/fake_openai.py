"""A small OpenAI-compatible server on loopback for tests: `POST /v1/chat/completions`, plain
HTTP, the real JSON and SSE shapes (role chunk, content chunks, finish chunk, usage chunk when
`stream_options.include_usage` is asked, `data: [DONE]`).

It is a `LoopbackServer` (tests/ai/fake_server.py): uvicorn on a free 127.0.0.1 port, every
request recorded, scripted per test with `fake.script(...)` for the streaming calls (the
replies) and `fake.script_plain(...)` for the others (the titles).
"""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from uvicorn.config import LOGGING_CONFIG

from tests.ai.fake_server import Hang, LoopbackServer, cut_short, read_body


# --- behaviours ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Reply:
    """A completion. Streamed: one chunk per item of `chunks`; `break_after` ends the
    connection after them (no finish, no [DONE]); `stall_after` sends nothing more until the
    client gives up; `error_event` sends an in-stream `{"error": ...}` after them;
    `done_early` sends `[DONE]` right after them, with no finish reason. `reasoning` is
    streamed first, one chunk each, as `delta.<reasoning_field>` (DeepSeek's and vLLM's
    `reasoning_content`, or `reasoning`); `cached_tokens` is
    `usage.prompt_tokens_details.cached_tokens`."""

    chunks: Sequence[str] = ("Hello", " from", " the fake.")
    finish_reason: str = "stop"
    prompt_tokens: int = 11
    completion_tokens: int = 7
    reasoning_tokens: int | None = None
    reasoning: Sequence[str] = ()
    reasoning_field: str = "reasoning_content"
    cached_tokens: int | None = None
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


_DATA_URL = re.compile(r"^data:([a-z]+/[a-z0-9.+-]+);base64,([A-Za-z0-9+/]*={0,2})$")


def data_url(url: str) -> tuple[str, bytes]:
    """(media type, bytes) of a base64 data URL; ValueError for anything else."""
    match = _DATA_URL.match(url)
    if match is None:
        raise ValueError(f"not a base64 data URL: {url[:40]!r}")
    return match.group(1), base64.b64decode(match.group(2), validate=True)


def _refused_content(messages: list[Any]) -> str | None:
    """What the API refuses in a message's content parts: an unknown type, an image that is
    not a data URL (this fake fetches no URL), a file without a data URL and a name."""
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        if message.get("role") != "user":
            return "content parts are for user messages here"
        for part in content:
            kind = part.get("type")
            try:
                if kind == "text":
                    if not isinstance(part.get("text"), str):
                        return "a text part needs its text"
                elif kind == "image_url":
                    data_url(part["image_url"]["url"])
                elif kind == "file":
                    data_url(part["file"]["file_data"])
                    if not part["file"].get("filename"):
                        return "a file part needs a filename"
                else:
                    return f"Invalid content part type {kind!r}."
            except (KeyError, TypeError, ValueError) as exc:
                return f"Invalid {kind} part: {exc}"
    return None


# --- the server ---------------------------------------------------------------------------------
class FakeOpenAI(LoopbackServer[Reply | Fail, Recorded]):
    def __init__(self) -> None:
        super().__init__(
            "OpenAI",
            [Route("/v1/chat/completions", self._completions, methods=["POST"])],
            streamed=Reply(),
            plain=Reply(chunks=['"Paris Trip Ideas."']),
            log_config=LOGGING_CONFIG,  # uvicorn's default, which this fake has always used
        )

    # what was asked, under the names the tests use
    completions = LoopbackServer.streamed_requests
    plain_completions = LoopbackServer.plain_requests

    # --- the endpoint ---------------------------------------------------------------------------
    async def _completions(self, request: Request) -> Response:
        body = await read_body(request)
        self.requests.append(
            Recorded(request.method, request.url.path, dict(request.headers), body)
        )
        if not isinstance(body, dict) or not body.get("model") or not body.get("messages"):
            return _error(
                Fail(400, "'model' and 'messages' are required.", "invalid_request_error")
            )
        refused = _refused_content(body["messages"])
        if refused is not None:
            return _error(Fail(400, refused, "invalid_request_error"))
        stream = body.get("stream") is True
        if body.get("stream_options") is not None and not stream:
            return _error(
                Fail(400, "stream_options is only allowed with stream.", "invalid_request_error")
            )
        behaviour = await self._next(request, stream)
        if behaviour is None:  # after a Hang
            return Response(status_code=503)
        if isinstance(behaviour, Fail):
            return _error(behaviour)
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
        for thought in reply.reasoning:
            yield chunk({"content": None, reply.reasoning_field: thought})
        for text in reply.chunks:
            yield chunk({"content": text})
        if cut_short(reply):
            async for line in self._cut_off(reply, request, _sse):
                yield line
            return
        if reply.done_early:
            yield "data: [DONE]\n\n"
            return
        yield chunk({}, reply.finish_reason)
        if include_usage:
            yield _sse({**base, "choices": [], "usage": _usage(reply)})
        yield "data: [DONE]\n\n"


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
    if reply.cached_tokens is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": reply.cached_tokens}
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
