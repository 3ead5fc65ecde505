"""Reply streams: the chunks of a reply as they are produced, readable from any API process.

Production: one Redis Stream per reply (`XADD`, blocking `XREAD`), kept REPLY_STREAM_TTL_SECONDS
after the end. Embedded: an in-process buffer with the same interface. Event ids are what a
client sends back as `Last-Event-ID` to resume without loss or duplicates.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
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

    async def aclose(self) -> None: ...


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

    async def aclose(self) -> None:
        self._buffers.clear()


def _int_id(value: str | None) -> int:
    try:
        return int(value) if value else 0
    except ValueError:
        return 0


class RedisReplyStream:
    """Reply streams on Redis. Readers that have to wait share one blocking `XREAD` per process
    (the `_Hub`), so thousands of open SSE streams hold one Redis connection, not one each."""

    def __init__(
        self, redis: Redis, prefix: str, max_events: int = 100_000, block_ms: int = 5_000
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._max_events = max_events
        self._hub = _Hub(redis, f"{prefix}:hub:{uuid.uuid4().hex}", block_ms)

    def _key(self, reply_id: int) -> str:
        return f"{self._prefix}:reply:{reply_id}"

    async def append(self, reply_id: int, type_: str, data: str) -> str:
        event_id = await self._redis.xadd(
            self._key(reply_id), {"t": type_, "d": data}, maxlen=self._max_events
        )
        return _text(event_id)

    async def read(self, reply_id: int, after: str | None, block_ms: int) -> list[StreamEvent]:
        start = after if after and _valid_stream_id(after) else "0-0"
        key = self._key(reply_id)
        response: Any = await self._redis.xread({key: start})
        events = _events(response)
        if events or block_ms <= 0:
            return events
        return await self._hub.wait(key, start, block_ms / 1000)

    async def exists(self, reply_id: int) -> bool:
        return bool(await self._redis.exists(self._key(reply_id)))

    async def expire(self, reply_id: int, ttl_seconds: int) -> None:
        await self._redis.expire(self._key(reply_id), ttl_seconds)

    async def clear(self, reply_id: int) -> None:
        # Trim, not delete: ids keep growing, so a client's Last-Event-ID stays meaningful.
        await self._redis.xtrim(self._key(reply_id), maxlen=0, approximate=False)

    async def aclose(self) -> None:
        await self._hub.aclose()


@dataclass(eq=False, slots=True)
class _Waiter:
    after: tuple[int, int]
    future: asyncio.Future[list[StreamEvent]]


class _Hub:
    """One task per process that waits, in a single blocking `XREAD`, on every stream some
    reader is waiting on, and hands each reader the events after its own position.

    A new waiter wakes the task through a private stream (`XADD` to `wake_key`, part of every
    `XREAD`), so it is included at once. Started on first use; on a Redis error every waiter
    gets the error and the task retries with a growing pause."""

    WAKE_TTL_SECONDS = 3600

    def __init__(self, redis: Redis, wake_key: str, block_ms: int) -> None:
        self._block_ms = block_ms  # under the client's socket timeout
        self._redis = redis
        self._wake_key = wake_key
        self._waiters: dict[str, set[_Waiter]] = {}
        self._task: asyncio.Task[None] | None = None

    async def wait(self, key: str, after: str, within: float) -> list[StreamEvent]:
        loop = asyncio.get_running_loop()
        waiter = _Waiter(_parse_id(after), loop.create_future())
        self._waiters.setdefault(key, set()).add(waiter)
        try:
            if self._task is None or self._task.done():
                self._task = asyncio.create_task(self._run(), name="reply-stream-hub")
            else:
                await self._wake()
            return await asyncio.wait_for(waiter.future, within)
        except TimeoutError:
            return []
        finally:
            group = self._waiters.get(key)
            if group is not None:
                group.discard(waiter)
                if not group:
                    del self._waiters[key]

    async def _wake(self) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.xadd(self._wake_key, {"w": "1"}, maxlen=10, approximate=True)
            pipe.expire(self._wake_key, self.WAKE_TTL_SECONDS)
            await pipe.execute()

    async def _run(self) -> None:
        wake_position = "0-0"  # the wake stream is this object's own: all of it is new
        pause = 0.05
        while self._waiters:
            positions: dict[Any, Any] = {self._wake_key: wake_position}
            for key, group in self._waiters.items():
                waiting = [w.after for w in group if not w.future.done()]
                if waiting:
                    first = min(waiting)
                    positions[key] = f"{first[0]}-{first[1]}"
            try:
                response: Any = await self._redis.xread(positions, block=self._block_ms)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis down: every waiter learns it; retry later
                for group in self._waiters.values():
                    for waiter in group:
                        if not waiter.future.done():
                            waiter.future.set_exception(exc)
                await asyncio.sleep(pause)  # backoff before reconnecting, not synchronisation
                pause = min(pause * 2, 2.0)
                continue
            pause = 0.05
            for raw_key, entries in response or []:
                key = _text(raw_key)
                if key == self._wake_key:
                    wake_position = _text(entries[-1][0])
                    continue
                events = [_event(raw_id, fields) for raw_id, fields in entries]
                for waiter in self._waiters.get(key, ()):
                    mine = [e for e in events if _parse_id(e.id) > waiter.after]
                    if mine and not waiter.future.done():
                        waiter.future.set_result(mine)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _parse_id(value: str) -> tuple[int, int]:
    head, _, tail = value.partition("-")
    return int(head), int(tail or 0)


def _event(raw_id: bytes | str, fields: dict[bytes, bytes]) -> StreamEvent:
    return StreamEvent(_text(raw_id), _text(fields[b"t"]), _text(fields[b"d"]))


def _events(response: Any) -> list[StreamEvent]:
    return [
        _event(raw_id, fields) for _stream, entries in response or [] for raw_id, fields in entries
    ]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _valid_stream_id(value: str) -> bool:
    head, _, tail = value.partition("-")
    return head.isdigit() and (tail == "" or tail.isdigit())
