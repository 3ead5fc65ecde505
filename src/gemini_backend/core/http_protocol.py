"""uvicorn's httptools protocol with bounds on a request's head: its size (431) and the time it
takes to arrive (the connection is closed), so that neither a huge header nor a client that
sends one slowly (slowloris) holds memory or a connection, whatever sits in front.

uvicorn has neither for httptools: llhttp buffers a header of any size, and nothing times a
head that never ends (the keep-alive timer only runs between requests).
"""

from __future__ import annotations

import asyncio
import functools
import json

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from gemini_backend.config import Settings

_TOO_LARGE_BODY = json.dumps(
    {"detail": "The request headers are too large.", "code": "headers_too_large"}
).encode()
_TOO_LARGE = b"".join(
    [
        STATUS_LINE[431],
        b"content-type: application/json\r\n",
        b"content-length: " + str(len(_TOO_LARGE_BODY)).encode() + b"\r\n",
        b"connection: close\r\n\r\n",
        _TOO_LARGE_BODY,
    ]
)


@functools.cache
def _limits() -> tuple[int, float]:
    """(MAX_HEADER_BYTES, HEADER_READ_TIMEOUT_SECONDS) of this process, read once (uvicorn
    builds its protocols itself, in each process of `--workers N`)."""
    settings = Settings()
    return settings.max_header_bytes, settings.header_read_timeout_seconds


class _HeadTooLarge(Exception):
    pass


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.max_head_bytes, self.head_timeout = _limits()
        self.head_pending = True  # between a request's start (or the connection's) and its head
        self.head_bytes = 0
        self.head_timer: asyncio.TimerHandle | None = None
        self.head_refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.head_pending:
            self.head_bytes += len(data)
        super().data_received(data)
        # Checked after parsing: a chunk that completes a small head may carry the body too.
        if self.head_pending and self.head_bytes > self.max_head_bytes:
            self._refuse_head()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_head_timer()

    def on_headers_complete(self) -> None:
        self.head_pending = False
        self._disarm_head_timer()
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self.max_head_bytes:
            self.head_refused = True
            raise _HeadTooLarge()  # stops the parser; answered in send_400_response
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.head_pending = True
        self.head_bytes = 0

    def send_400_response(self, msg: str) -> None:
        if self.head_refused:
            self._refuse_head()
        else:
            super().send_400_response(msg)

    def _refuse_head(self) -> None:
        self._disarm_head_timer()
        if not self.transport.is_closing():
            self.transport.write(_TOO_LARGE)
            self.transport.close()

    def _arm_head_timer(self) -> None:
        if self.head_timer is None:
            self.head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def _head_timed_out(self) -> None:
        self.head_timer = None
        if self.head_pending and not self.transport.is_closing():
            self.logger.info("Request head not received in time: closing the connection.")
            self.transport.close()
