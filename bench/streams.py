"""Holding many SSE streams open against one API process, with raw asyncio sockets (a few KB
each on the client side, so thousands fit in the harness)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field


@dataclass
class HeldStream:
    path: str
    opened: bool = False
    status: int = 0
    error: str = ""
    closed_at: float | None = None
    received: int = 0
    writer: asyncio.StreamWriter | None = None
    watcher: asyncio.Task[None] | None = field(default=None, repr=False)


async def _open(host: str, port: int, path: str, token: str, step_seconds: float) -> HeldStream:
    held = HeldStream(path)
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), step_seconds)
    except (OSError, TimeoutError) as exc:
        held.error = f"connect: {type(exc).__name__}"
        return held
    held.writer = writer
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
        "Accept: text/event-stream\r\n\r\n"
    )
    try:
        writer.write(request.encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), step_seconds)
        held.status = int(head.split(b" ", 2)[1])
        if held.status != 200:
            held.error = f"status {held.status}"
            writer.close()
            return held
        # The stream's first event is a comment (": stream open"), sent before any chunk.
        seen = b""
        while b"stream open" not in seen:
            chunk = await asyncio.wait_for(reader.read(4096), step_seconds)
            if not chunk:
                held.error = "closed before the first event"
                writer.close()
                return held
            seen += chunk
        held.received = len(seen)
        held.opened = True
    except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
        held.error = f"open: {type(exc).__name__}"
        writer.close()
        return held

    async def watch() -> None:
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                held.received += len(data)
        except (OSError, asyncio.CancelledError):
            pass
        if held.closed_at is None:
            held.closed_at = time.monotonic()

    held.watcher = asyncio.create_task(watch())
    return held


async def open_streams(
    host: str,
    port: int,
    targets: list[tuple[str, str]],
    *,
    concurrency: int = 100,
    step_seconds: float = 30.0,
) -> list[HeldStream]:
    """Open one stream per (path, token), `concurrency` handshakes at a time; they stay open
    (a watcher task per stream notes when the server closes it)."""
    semaphore = asyncio.Semaphore(concurrency)

    async def one(path: str, token: str) -> HeldStream:
        async with semaphore:
            return await _open(host, port, path, token, step_seconds)

    return list(await asyncio.gather(*(one(p, t) for p, t in targets)))


async def close_streams(streams: list[HeldStream]) -> None:
    for held in streams:
        if held.writer is not None:
            held.writer.close()
    watchers = [h.watcher for h in streams if h.watcher is not None]
    for task in watchers:
        task.cancel()
    await asyncio.gather(*watchers, return_exceptions=True)
