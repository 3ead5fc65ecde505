"""Pure ASGI middleware: request ids and access logs, and the request body size limit."""

from __future__ import annotations

import re
import secrets
import time

import structlog
from fastapi import HTTPException
from starlette.datastructures import MutableHeaders
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

    def __init__(self, app: ASGIApp, hsts: bool = False) -> None:
        self.app = app
        self.headers = dict(SECURITY_HEADERS)
        if hsts:
            self.headers["Strict-Transport-Security"] = HSTS

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
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

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                headers["X-Request-ID"] = request_id
                for name, value in self.headers.items():
                    if name not in headers:
                        headers[name] = value
            await send(message)

        started_response = False

        async def send_tracked(message: Message) -> None:
            nonlocal started_response
            started_response = True
            await send_with_id(message)

        try:
            try:
                await self.app(scope, receive, send_tracked)
            except Exception as exc:
                if started_response:
                    raise  # too late for an error response: the server closes the connection
                # Answered here rather than by Starlette's outermost ServerErrorMiddleware, so
                # the 500/503 also carries the request id and headers and is counted.
                response = unexpected_error_response(exc, scope["method"], scope["path"])
                await response(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            # The route template (bounded cardinality); unknown paths share one label.
            template = getattr(route, "path", None) or "unmatched"
            HTTP_REQUESTS.labels(scope["method"], template, str(status)).inc()
            HTTP_LATENCY.labels(scope["method"], template).observe(elapsed)
            log.info(
                "request",
                method=scope["method"],
                path=scope["path"],
                status=status,
                duration_ms=round(elapsed * 1000, 2),
            )
            structlog.contextvars.clear_contextvars()


class _BodyTooLarge(HTTPException):
    def __init__(self) -> None:
        super().__init__(status_code=413, detail=PayloadTooLarge.detail)


class BodyLimitMiddleware:
    """Refuses bodies over `max_bytes` with 413: by `Content-Length` up front, and by counting
    for chunked uploads."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared < 0:
                    response = error_response(400, "bad_request", "Invalid Content-Length.")
                elif declared > self.max_bytes:
                    response = error_response(413, "payload_too_large", PayloadTooLarge.detail)
                else:
                    break
                await response(scope, receive, send)
                return
                break
        received = 0
        response_started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
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
