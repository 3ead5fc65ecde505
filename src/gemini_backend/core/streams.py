"""Reply streams: the chunks of a reply as they are produced, readable from any API process.

Production: one Redis Stream per reply (`XADD`, read with `XREAD`; a reader waiting for more
listens to the reply's Pub/Sub notices), kept REPLY_STREAM_TTL_SECONDS after the end.
Embedded: an in-process buffer with the same interface. Event ids are what a client sends back
as `Last-Event-ID` to resume without loss or duplicates.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from gemini_backend.core.notices import SHUTDOWN_SECONDS
from gemini_backend.core.redis import as_text
from gemini_backend.core.tasks import cancel_and_wait

if TYPE_CHECKING:
    from redis.asyncio import Redis


@dataclass(frozen=True, slots=True)
class StreamEvent:
    id: str
    type: str  # delta | reset | done | error
    data: str  # JSON


# Redis commands a caller adds to the round trip of an event's append (its pipeline).
FinalCommands = Callable[[Any], None]


class ReplyStream(Protocol):
    async def append(
        self,
        reply_id: int,
        type_: str,
        data: str,
        *,
        expire_seconds: int | None = None,
        notices: Sequence[tuple[str, str]] = (),
        also: FinalCommands | None = None,
    ) -> str:
        """Add an event; `expire_seconds` (with the final event) also sets the stream's expiry,
        and `notices`, Pub/Sub (channel, message) pairs, are published before the event, all in
        the same round trip (an in-process stream has no other process to tell); `also` adds
        its own commands to that round trip's pipeline, after the event (Redis only)."""
        ...

    async def read(self, reply_id: int, after: str | None, block_ms: int) -> list[StreamEvent]:
        """Events after `after` (all if None); waits up to `block_ms` when there are none."""
        ...

    async def exists(self, reply_id: int) -> bool: ...

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

    async def append(
        self,
        reply_id: int,
        type_: str,
        data: str,
        *,
        expire_seconds: int | None = None,
        notices: Sequence[tuple[str, str]] = (),
        also: FinalCommands | None = None,
    ) -> str:
        buffer = self._buffer(reply_id, create=True)
        assert buffer is not None
        event = StreamEvent(str(buffer.next_id), type_, data)
        buffer.next_id += 1
        buffer.events.append(event)
        buffer.changed.set()
        buffer.changed = asyncio.Event()
        if expire_seconds is not None:
            buffer.expires_at = time.monotonic() + expire_seconds
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
            async with asyncio.timeout(block_ms / 1000):  # no task of its own, unlike wait_for
                await waiter.wait()
        except TimeoutError:
            return []
        return [e for e in buffer.events if int(e.id) > start]

    async def exists(self, reply_id: int) -> bool:
        buffer = self._buffer(reply_id, create=False)
        return buffer is not None and bool(buffer.events)

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
    """Reply streams on Redis. Every append also publishes a notice on the reply's Pub/Sub
    channel; a reader with nothing to read subscribes (one Pub/Sub connection per process,
    shared by all its waiting readers) and reads again when told. Thousands of open SSE streams
    thus hold one Redis connection, and each notice costs one read by the readers of that reply
    only."""

    def __init__(
        self, redis: Redis, prefix: str, max_events: int = 100_000, timeout: float = 10.0
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._max_events = max_events
        # A reader's every wait on Redis (a pool connection, a command with its retries, a
        # subscription) ends within this, as an outage: a hung Redis never holds an open stream.
        self._timeout = timeout
        self._notices = _Notices(redis, subscribe_within=timeout)

    def _key(self, reply_id: int) -> str:
        return f"{self._prefix}:reply:{reply_id}"

    def _channel(self, reply_id: int) -> str:
        return f"{self._prefix}:reply-notice:{reply_id}"

    async def append(
        self,
        reply_id: int,
        type_: str,
        data: str,
        *,
        expire_seconds: int | None = None,
        notices: Sequence[tuple[str, str]] = (),
        also: FinalCommands | None = None,
    ) -> str:
        key = self._key(reply_id)
        async with self._redis.pipeline(transaction=False) as pipe:
            for channel, message in notices:
                pipe.publish(channel, message)
            pipe.xadd(key, {"t": type_, "d": data}, maxlen=self._max_events)
            if expire_seconds is not None:
                pipe.expire(key, expire_seconds)
            pipe.publish(self._channel(reply_id), b"1")
            if also is not None:
                also(pipe)
            results = await pipe.execute()
        return as_text(results[len(notices)])

    async def read(self, reply_id: int, after: str | None, block_ms: int) -> list[StreamEvent]:
        start = after if after and _valid_stream_id(after) else "0-0"
        key = self._key(reply_id)
        if block_ms <= 0:
            return await self._read_now(key, start)
        deadline = asyncio.get_running_loop().time() + block_ms / 1000
        # Subscribed before the read: a notice for anything appended after the read cannot be
        # missed. Only the wait for a notice ends quietly at the deadline; a Redis that does not
        # answer a read fails it.
        async with self._notices.listening(self._channel(reply_id)) as notified:
            while not (events := await self._read_now(key, start)):
                try:
                    async with asyncio.timeout_at(deadline):
                        await notified.wait()
                except TimeoutError:
                    return []
                notified.clear()
            return events

    async def _read_now(self, key: str, start: str) -> list[StreamEvent]:
        async with _bounded(self._timeout):
            response: Any = await self._redis.xread({key: start})
        return [
            _event(raw_id, fields)
            for _stream, entries in response or []
            for raw_id, fields in entries
        ]

    async def exists(self, reply_id: int) -> bool:
        async with _bounded(self._timeout):
            return bool(await self._redis.exists(self._key(reply_id)))

    async def clear(self, reply_id: int) -> None:
        # Trim, not delete: ids keep growing, so a client's Last-Event-ID stays meaningful.
        await self._redis.xtrim(self._key(reply_id), maxlen=0, approximate=False)

    async def aclose(self) -> None:
        await self._notices.aclose()


@dataclass(eq=False)
class _Channel:
    listeners: set[asyncio.Event] = field(default_factory=set)
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)
    idle_since: float | None = None


class _Notices:
    """The Pub/Sub side of the reply streams of one process: one connection, one task sending
    SUBSCRIBE / UNSUBSCRIBE (readers only ask and wait, so a reader's timeout can never cut a
    command in half) and one task receiving. A channel is subscribed while readers wait on it
    and for LINGER seconds after the last one left (an SSE stream reads again right after each
    chunk and finds the subscription still there).

    On a lost connection every waiting reader is woken (its next read tells it whether Redis is
    back) and redis-py re-subscribes the channels when it reconnects."""

    LINGER = 2.0

    def __init__(self, redis: Redis, subscribe_within: float = 10.0) -> None:
        self._redis = redis
        self._subscribe_within = subscribe_within
        self._pubsub: Any = None
        self._channels: dict[str, _Channel] = {}
        self._to_subscribe: set[str] = set()
        self._work = asyncio.Event()
        self._commander: asyncio.Task[None] | None = None
        self._receiver: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def listening(self, channel: str) -> AsyncIterator[asyncio.Event]:
        notified = asyncio.Event()
        entry = self._channels.get(channel)
        if entry is None:
            entry = self._channels[channel] = _Channel()
        entry.listeners.add(notified)
        entry.idle_since = None
        try:
            if not entry.subscribed.is_set():
                self._to_subscribe.add(channel)
                self._work.set()
                if self._commander is None or self._commander.done():
                    self._commander = asyncio.create_task(self._command(), name="reply-notices")
                async with _bounded(self._subscribe_within):
                    await entry.subscribed.wait()  # confirmed by Redis: no notice can be missed
            yield notified
        finally:
            entry.listeners.discard(notified)
            if not entry.listeners:
                entry.idle_since = asyncio.get_running_loop().time()

    async def _command(self) -> None:
        pause = 0.05
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._work.wait(), self.LINGER)  # work, or a cleanup
            self._work.clear()
            asking = list(self._to_subscribe)
            self._to_subscribe.clear()
            try:
                if self._pubsub is None:
                    self._pubsub = self._redis.pubsub()
                if asking:
                    # Even for a channel redis-py still lists (an UNSUBSCRIBE may be on its way):
                    # this SUBSCRIBE comes after it, and its confirmation sets `subscribed`.
                    await self._pubsub.subscribe(*asking)
                    if self._receiver is None or self._receiver.done():
                        self._receiver = asyncio.create_task(self._receive(), name="notices-in")
                await self._unsubscribe_idle()
                pause = 0.05
            except Exception:
                # Redis unavailable: the readers waiting for these channels go on (their next
                # read fails, or finds events); later readers ask again.
                for name in asking:
                    entry = self._channels.get(name)
                    if entry is not None:
                        entry.subscribed.set()
                await asyncio.sleep(pause)  # backoff before trying Redis again
                pause = min(pause * 2, 2.0)

    async def _unsubscribe_idle(self) -> None:
        cutoff = asyncio.get_running_loop().time() - self.LINGER
        gone = [
            name
            for name, entry in self._channels.items()
            if not entry.listeners and entry.idle_since is not None and entry.idle_since <= cutoff
        ]
        for name in gone:
            del self._channels[name]
        if gone and self._pubsub is not None:
            await self._pubsub.unsubscribe(*gone)

    async def _receive(self) -> None:
        pause = 0.05
        while True:
            try:
                message = await self._pubsub.get_message(timeout=self.LINGER)
            except asyncio.CancelledError:
                raise
            except Exception:
                # Redis gone: wake every waiting reader; its next read fails or finds events.
                for entry in self._channels.values():
                    entry.subscribed.set()
                    for notified in entry.listeners:
                        notified.set()
                await asyncio.sleep(pause)  # backoff before reconnecting, not synchronisation
                pause = min(pause * 2, 2.0)
                continue
            pause = 0.05
            if message is None:
                continue
            receiver = self._channels.get(as_text(message["channel"]))
            if receiver is None:
                continue
            if message["type"] == "subscribe":
                receiver.subscribed.set()
            elif message["type"] == "message":
                for notified in receiver.listeners:
                    notified.set()

    async def aclose(self) -> None:
        for task in (self._commander, self._receiver):
            if task is not None:
                await cancel_and_wait(task, give_up_after=SHUTDOWN_SECONDS)
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()


@contextlib.asynccontextmanager
async def _bounded(seconds: float) -> AsyncIterator[None]:
    """At most `seconds`, or Redis' TimeoutError (an outage, `core.errors.is_outage`)."""
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError as exc:
        from redis.exceptions import TimeoutError as RedisTimeoutError

        raise RedisTimeoutError(f"no answer from Redis within {seconds} s") from exc


def _event(raw_id: bytes | str, fields: dict[bytes, bytes]) -> StreamEvent:
    return StreamEvent(as_text(raw_id), as_text(fields[b"t"]), as_text(fields[b"d"]))


_MAX_ID_PART = 2**64 - 1  # a Redis stream id is two unsigned 64-bit integers


def _valid_stream_id(value: str) -> bool:
    """A Last-Event-ID Redis takes as a stream id; anything else would fail the read (the
    stream would end right after it opened)."""
    head, dash, tail = value.partition("-")
    return all(
        part.isascii() and part.isdigit() and int(part) <= _MAX_ID_PART
        for part in ((head, tail) if dash else (head,))
    )
