"""Pure ASGI middleware: request ids and access logs, and the request body size limit."""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Awaitable
from typing import Any

import structlog
from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gemini_backend.core.errors import PayloadTooLarge, error_response, unexpected_error_response
from gemini_backend.core.metrics import HTTP_LATENCY, HTTP_REQUESTS

log = structlog.get_logger("gemini_backend.http")
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


# Sent on every response (a route's own value wins). A JSON API is never framed, sniffed or
# cached by shared caches; HSTS only when the service says it is served over HTTPS.
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "frame-ancestors 'none'",
    "Cross-Origin-Opener-Policy": "same-origin",
}
HSTS = "max-age=31536000; includeSubDomains"


class RequestContextMiddleware:
    """Gives each request an id (the client's `X-Request-ID` if sane), binds it to every log line
    of the request, echoes it on the response with the security headers, counts it in the
    metrics and logs one line per request."""

    def __init__(self, app: ASGIApp, hsts: bool = False, log_requests: bool = True) -> None:
        self.app = app
        # The access line is at INFO: when that level is off the call is skipped altogether.
        self.log_requests = log_requests
        headers = dict(SECURITY_HEADERS)
        if hsts:
            headers["Strict-Transport-Security"] = HSTS
        # Encoded once; added to each response start without Starlette's MutableHeaders.
        self.headers = [
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()
        ]
        self.header_names = frozenset(name for name, _ in self.headers)
        self._metrics: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if len(path) > 1 and path.endswith("/"):
            # `/chatroom/` is served as `/chatroom`, without a redirect.
            scope["path"] = path.rstrip("/") or "/"
        incoming = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                incoming = value.decode("latin-1")
                break
        request_id = (
            incoming if incoming and _VALID_REQUEST_ID.match(incoming) else secrets.token_hex(16)
        )
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        status = 500
        started_response = False
        request_id_header = (b"x-request-id", request_id.encode("latin-1"))

        async def send_with_id(message: Message) -> None:
            nonlocal status, started_response
            started_response = True
            if message["type"] == "http.response.start":
                status = message["status"]
                raw = list(message.get("headers", ()))
                present = {name.lower() for name, _ in raw}
                raw.append(request_id_header)
                if present.isdisjoint(self.header_names):
                    raw.extend(self.headers)
                else:
                    raw.extend(h for h in self.headers if h[0] not in present)
                message["headers"] = raw
            await send(message)

        try:
            try:
                await self.app(scope, receive, send_with_id)
            except Exception as exc:
                if started_response:
                    raise  # too late for an error response: the server closes the connection
                # Answered here rather than by Starlette's outermost ServerErrorMiddleware, so
                # the 500/503 also carries the request id and headers and is counted.
                response = unexpected_error_response(exc, scope["method"], scope["path"])
                await response(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            self._observe(scope, status, elapsed)
            if self.log_requests:
                log.info(
                    "request",
                    method=scope["method"],
                    path=scope["path"],
                    status=status,
                    duration_ms=round(elapsed * 1000, 2),
                )
            structlog.contextvars.clear_contextvars()

    def _observe(self, scope: Scope, status: int, elapsed: float) -> None:
        route = scope.get("route")
        # The route template (bounded cardinality); unknown paths share one label.
        template = getattr(route, "path", None) or "unmatched"
        key = (scope["method"], template, status)
        children = self._metrics.get(key)
        if children is None:
            children = self._metrics[key] = (
                HTTP_REQUESTS.labels(key[0], template, str(status)),
                HTTP_LATENCY.labels(key[0], template),
            )
        children[0].inc()
        children[1].observe(elapsed)


class _BodyTooLarge(HTTPException):
    def __init__(self) -> None:
        super().__init__(status_code=413, detail=PayloadTooLarge.detail)


class BodyLimitMiddleware:
    """Refuses bodies over `max_bytes` with 413: by `Content-Length` up front, and by counting
    for chunked uploads. A POST to a path ending in `upload_suffix` (a file upload, which its
    route streams and limits per plan) may have up to `upload_max_bytes`."""

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        *,
        upload_suffix: str | None = None,
        upload_max_bytes: int = 0,
        post_limits: dict[str, int] | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.upload_suffix = upload_suffix
        self.upload_max_bytes = max(max_bytes, upload_max_bytes)
        # A POST to one of these paths has a limit of its own (an import of conversations).
        self.post_limits = post_limits or {}

    def _limit(self, scope: Scope) -> int:
        if scope["method"] == "POST" and self.post_limits:
            own = self.post_limits.get(scope["path"].rstrip("/"))
            if own is not None:
                return max(self.max_bytes, own)
        if (
            self.upload_suffix is not None
            and scope["method"] == "POST"
            and scope["path"].endswith(self.upload_suffix)
        ):
            return self.upload_max_bytes
        return self.max_bytes

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # A plain function: a request with nothing to count is handed on without a frame of
        # this middleware staying alive for its lifetime (an open stream holds every frame).
        if scope["type"] != "http":
            return self.app(scope, receive, send)
        chunked = False
        limit = self._limit(scope)
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared < 0:
                    return error_response(400, "bad_request", "Invalid Content-Length.")(
                        scope, receive, send
                    )
                if declared > limit:
                    return error_response(413, "payload_too_large", PayloadTooLarge.detail)(
                        scope, receive, send
                    )
                # The server delivers no more than the declared length: nothing to count.
                return self.app(scope, receive, send)
            if name == b"transfer-encoding":
                chunked = True
        if not chunked:  # no body at all (a GET, a DELETE)
            return self.app(scope, receive, send)
        return self._counted(scope, receive, send, limit)

    async def _counted(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        received = 0
        response_started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge()
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _BodyTooLarge:
            if response_started:
                raise
            await error_response(413, "payload_too_large", PayloadTooLarge.detail)(
                scope, receive, send
            )
