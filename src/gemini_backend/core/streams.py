"""Reply streams: the chunks of a reply as they are produced, readable from any API process.

Production: one Redis Stream per reply (`XADD`, blocking `XREAD`), kept REPLY_STREAM_TTL_SECONDS
after the end. Embedded: an in-process buffer with the same interface. Event ids are what a
client sends back as `Last-Event-ID` to resume without loss or duplicates.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from redis.asyncio import Redis


@dataclass(frozen=True, slots=True)
class StreamEvent:
    id: str
    type: str  # delta | reset | done | error
    data: str  # JSON


class ReplyStream(Protocol):
    async def append(self, reply_id: int, type_: str, data: str) -> str: ...

    async def read(self, reply_id: int, after: str | None, block_ms: int) -> list[StreamEvent]:
        """Events after `after` (all if None); waits up to `block_ms` when there are none."""
        ...

    async def exists(self, reply_id: int) -> bool: ...

    async def expire(self, reply_id: int, ttl_seconds: int) -> None: ...

    async def clear(self, reply_id: int) -> None: ...


@dataclass
class _Buffer:
    events: list[StreamEvent] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    expires_at: float | None = None
    next_id: int = 1


class MemoryReplyStream:
    def __init__(self) -> None:
        self._buffers: dict[int, _Buffer] = {}

    def _buffer(self, reply_id: int, create: bool) -> _Buffer | None:
        self._purge()
        buffer = self._buffers.get(reply_id)
        if buffer is None and create:
            buffer = self._buffers[reply_id] = _Buffer()
        return buffer

    def _purge(self) -> None:
        now = time.monotonic()
        expired = [k for k, b in self._buffers.items() if b.expires_at and b.expires_at <= now]
        for key in expired:
            del self._buffers[key]

    async def append(self, reply_id: int, type_: str, data: str) -> str:
        buffer = self._buffer(reply_id, create=True)
        assert buffer is not None
        event = StreamEvent(str(buffer.next_id), type_, data)
        buffer.next_id += 1
        buffer.events.append(event)
        buffer.changed.set()
        buffer.changed = asyncio.Event()
        return event.id

    async def read(self, reply_id: int, after: str | None, block_ms: int) -> list[StreamEvent]:
        buffer = self._buffer(reply_id, create=True)
        assert buffer is not None
        start = _int_id(after)
        pending = [e for e in buffer.events if int(e.id) > start]
        if pending or block_ms <= 0:
            return pending
        waiter = buffer.changed
        try:
            await asyncio.wait_for(waiter.wait(), block_ms / 1000)
        except TimeoutError:
            return []
        return [e for e in buffer.events if int(e.id) > start]

    async def exists(self, reply_id: int) -> bool:
        buffer = self._buffer(reply_id, create=False)
        return buffer is not None and bool(buffer.events)

    async def expire(self, reply_id: int, ttl_seconds: int) -> None:
        buffer = self._buffer(reply_id, create=False)
        if buffer is not None:
            buffer.expires_at = time.monotonic() + ttl_seconds

    async def clear(self, reply_id: int) -> None:
        buffer = self._buffer(reply_id, create=False)
        if buffer is not None:
            buffer.events.clear()


def _int_id(value: str | None) -> int:
    try:
        return int(value) if value else 0
    except ValueError:
        return 0


class RedisReplyStream:
    def __init__(self, redis: Redis, prefix: str, max_events: int = 100_000) -> None:
        self._redis = redis
        self._prefix = prefix
        self._max_events = max_events

    def _key(self, reply_id: int) -> str:
        return f"{self._prefix}:reply:{reply_id}"

    async def append(self, reply_id: int, type_: str, data: str) -> str:
        event_id = await self._redis.xadd(
            self._key(reply_id), {"t": type_, "d": data}, maxlen=self._max_events
        )
        return event_id.decode() if isinstance(event_id, bytes) else str(event_id)

    async def read(self, reply_id: int, after: str | None, block_ms: int) -> list[StreamEvent]:
        start = after if after and _valid_stream_id(after) else "0-0"
        response: Any = await self._redis.xread(
            {self._key(reply_id): start}, block=block_ms if block_ms > 0 else None
        )
        events: list[StreamEvent] = []
        for _stream, entries in response or []:
            for raw_id, fields in entries:
                events.append(StreamEvent(_text(raw_id), _text(fields[b"t"]), _text(fields[b"d"])))
        return events

    async def exists(self, reply_id: int) -> bool:
        return bool(await self._redis.exists(self._key(reply_id)))

    async def expire(self, reply_id: int, ttl_seconds: int) -> None:
        await self._redis.expire(self._key(reply_id), ttl_seconds)

    async def clear(self, reply_id: int) -> None:
        # Trim, not delete: ids keep growing, so a client's Last-Event-ID stays meaningful.
        await self._redis.xtrim(self._key(reply_id), maxlen=0, approximate=False)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _valid_stream_id(value: str) -> bool:
    head, _, tail = value.partition("-")
    return head.isdigit() and (tail == "" or tail.isdigit())
