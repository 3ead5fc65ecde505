"""A lean HTTP/1.1 client for the reply pipeline's load: one keep-alive connection per
conversation, raw asyncio streams, nothing else.

The load client shares the machine with the service. httpx cost about 9 ms of CPU per
message (a POST and a streamed GET), a quarter of the machine at 50 conversations, taken from
the service it measures. This client does only what a conversation needs: a JSON POST whose
response has a Content-Length, then a GET whose response is `text/event-stream` in chunked
encoding, read to its end so the connection is used again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any


@dataclass
class Conversation:
    """One message of a conversation, timed from the client."""

    ok: bool
    post_ms: float = 0.0
    ttft_ms: float = 0.0  # 202 received -> first `delta` event received
    done_ms: float = 0.0  # 202 received -> `done` event received
    error: str = ""


class HttpError(Exception):
    pass


class Connection:
    """One keep-alive HTTP/1.1 connection; reopened when the server closed it."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    @classmethod
    def to(cls, base_url: str) -> Connection:
        hostport = base_url.removeprefix("http://").rstrip("/")
        host, _, port = hostport.partition(":")
        return cls(host, int(port or 80))

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
        self._reader = self._writer = None

    async def request(
        self, method: str, path: str, headers: dict[str, str], body: bytes = b""
    ) -> tuple[int, dict[str, str], AsyncIterator[bytes]]:
        """Send a request; the status, the headers and the body as an iterator of pieces."""
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        if body:
            lines.append(f"Content-Length: {len(body)}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode()
        reused = self._writer is not None
        reader = await self._open_and_send(head, body)
        status_line = await reader.readline()
        if not status_line and reused:
            # The server closed the idle connection (keep-alive timeout) before reading the
            # request: nothing was processed; send it again on a new connection.
            await self.close()
            reader = await self._open_and_send(head, body)
            status_line = await reader.readline()
        if not status_line:
            await self.close()
            raise HttpError("no response")
        status = int(status_line.split(b" ", 2)[1])
        response_headers: dict[str, str] = {}
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            response_headers[name.strip().lower()] = value.strip()
        return status, response_headers, self._body(reader, response_headers)

    async def _open_and_send(self, head: bytes, body: bytes) -> asyncio.StreamReader:
        if self._writer is None or self._writer.is_closing():
            await self.close()
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        assert self._reader is not None
        assert self._writer is not None
        self._writer.write(head + body)
        await self._writer.drain()
        return self._reader

    async def _body(
        self, reader: asyncio.StreamReader, headers: dict[str, str]
    ) -> AsyncIterator[bytes]:
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int((await reader.readline()).split(b";", 1)[0], 16)
                if size == 0:
                    await reader.readline()  # the CRLF after the last chunk (no trailers)
                    break
                data = await reader.readexactly(size + 2)
                yield data[:-2]
        else:
            length = int(headers.get("content-length", "0"))
            if length:
                yield await reader.readexactly(length)
        if headers.get("connection", "").lower() == "close":
            await self.close()

    async def json(
        self, method: str, path: str, headers: dict[str, str], payload: Any
    ) -> tuple[int, Any]:
        status, _response_headers, body = await self.request(
            method,
            path,
            {**headers, "Content-Type": "application/json"},
            json.dumps(payload).encode(),
        )
        data = b"".join([piece async for piece in body])
        return status, json.loads(data) if data else None


async def converse(conn: Connection, token: str, room: int, content: str) -> Conversation:
    """The same measurement as `bench.api.converse`: POST a message, open its stream at once,
    read it to the end; the time from the 202 to the first `delta` is the time to first token."""
    auth = {"Authorization": f"Bearer {token}"}
    started = time.perf_counter()
    try:
        status, receipt = await conn.json(
            "POST", f"/chatroom/{room}/message", auth, {"content": content}
        )
        accepted = time.perf_counter()
        if status != 202:
            return Conversation(False, error=f"send {status}")
        status, _headers, body = await conn.request(
            "GET", receipt["stream_url"], {**auth, "Accept": "text/event-stream"}
        )
        if status != 200:
            async for _ in body:
                pass
            return Conversation(False, error=f"stream {status}")
        first = finished = None
        event = ""
        pending = b""
        async for piece in body:  # to the end: the connection is then used again
            if finished is not None:
                continue
            pending += piece
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if line.startswith(b"event:"):
                    event = line[6:].strip().decode()
                    if event == "delta" and first is None:
                        first = time.perf_counter()
                    elif event in {"done", "error"} and finished is None:
                        finished = time.perf_counter()
        if finished is None:
            return Conversation(False, error=f"stream ended after {event or 'nothing'}")
        if event == "error" or first is None:
            return Conversation(False, error=f"reply ended with {event}")
        return Conversation(
            True,
            post_ms=(accepted - started) * 1000,
            ttft_ms=(first - accepted) * 1000,
            done_ms=(finished - accepted) * 1000,
        )
    except (HttpError, OSError, asyncio.IncompleteReadError, ValueError, KeyError) as exc:
        await conn.close()
        return Conversation(False, error=type(exc).__name__)


async def send(conn: Connection, token: str, room: int, content: str) -> dict[str, Any]:
    """A send whose receipt is wanted (202), as `bench.api.Api.send`."""
    status, receipt = await conn.json(
        "POST",
        f"/chatroom/{room}/message",
        {"Authorization": f"Bearer {token}"},
        {"content": content},
    )
    if status != 202:
        raise HttpError(f"send: {status} {str(receipt)[:300]}")
    return dict(receipt)
