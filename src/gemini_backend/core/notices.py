"""Change notices between processes: a Redis Pub/Sub channel that tells every API process to drop
what its in-process cache holds about a user.

A process caches only while it is subscribed. When the subscription is established the cache is
emptied (a notice missed while disconnected cannot leave a stale entry behind); when it is lost,
goes silent (a PING every PING_SECONDS must be answered) or fails, the cache is turned off until
the next subscription. Used by the principal cache (auth/principals.py) and the chatroom cache
(chat/cache.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Protocol

import structlog

from gemini_backend.core.tasks import cancel_and_wait

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = structlog.get_logger(__name__)

# The longest a closing feed waits for its task (which should end at once when cancelled).
SHUTDOWN_SECONDS = 5.0


class NoticeTarget(Protocol):
    """The in-process cache a feed keeps honest."""

    @property
    def usable(self) -> bool: ...

    def set_usable(self, usable: bool) -> None:
        """Empty the cache, and use it from now on (True) or not at all (False)."""
        ...

    def forget(self, user_id: int) -> None: ...


class InvalidationFeed:
    """The subscription of one process to one notice channel."""

    PING_SECONDS = 2.0
    # No message at all (not even the answer to a ping) for this long: the connection is dead.
    SILENCE_SECONDS = 6.0

    def __init__(self, redis: Redis, channel: str, target: NoticeTarget, name: str) -> None:
        self._redis = redis
        self._channel = channel
        self._target = target
        self._name = name
        self._task: asyncio.Task[None] | None = None
        self.subscriptions = 0
        self.heard = 0
        self.changed = asyncio.Condition()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"{self._name}-invalidations")

    def notice(self, user_id: int) -> tuple[str, str]:
        """The (channel, message) that tells every process to forget `user_id`."""
        return self._channel, str(user_id)

    async def publish(self, user_id: int) -> None:
        await self._redis.publish(*self.notice(user_id))

    async def publish_many(self, user_ids: Iterable[int]) -> None:
        """`publish` for each, in one round trip."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for user_id in user_ids:
                pipe.publish(*self.notice(user_id))
            await pipe.execute()

    async def wait_subscribed(self, more_than: int = 0) -> None:
        """Until the channel is subscribed for the (more_than + 1)th time (readiness, tests)."""
        await self._wait(lambda: self.subscriptions > more_than)

    async def wait_heard(self, more_than: int) -> None:
        """Until more than `more_than` notices have been applied (tests)."""
        await self._wait(lambda: self.heard > more_than)

    async def _wait(self, done: Callable[[], bool]) -> None:
        async with self.changed:
            await self.changed.wait_for(done)

    async def _run(self) -> None:
        pause = 0.05
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(self._channel)
                await self._listen(pubsub)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._target.usable:
                    log.warning(f"{self._name}_cache_off", error=type(exc).__name__)
            finally:
                self._target.set_usable(False)
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(pause)  # backoff before reconnecting, not synchronisation
            pause = min(pause * 2, 2.0)

    async def _listen(self, pubsub: object) -> None:
        loop = asyncio.get_running_loop()
        last_message = pinged = loop.time()
        while True:
            message = await pubsub.get_message(timeout=self.PING_SECONDS)  # type: ignore[attr-defined]
            now = loop.time()
            if message is not None:
                last_message = now
                kind = message["type"]
                if kind == "subscribe":
                    # From here on no change can be missed: start from an empty cache.
                    self._target.set_usable(True)
                    async with self.changed:
                        self.subscriptions += 1
                        self.changed.notify_all()
                elif kind == "message":
                    try:
                        self._target.forget(int(message["data"]))
                    except ValueError:
                        self._target.set_usable(True)  # unreadable notice: drop everything
                    async with self.changed:
                        self.heard += 1
                        self.changed.notify_all()
            if now - last_message > self.SILENCE_SECONDS:
                raise TimeoutError(f"no answer on the {self._channel} subscription")
            if now - pinged >= self.PING_SECONDS:
                pinged = now
                await pubsub.ping()  # type: ignore[attr-defined]

    async def aclose(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task, give_up_after=SHUTDOWN_SECONDS)
            self._task = None


class NoticeFed:
    """The lifecycle both in-process caches share: a feed in production (None embedded, where
    every change happens in this process and the cache is usable at once)."""

    _feed: InvalidationFeed | None
    _usable: bool

    def _listen(self, redis: Redis | None, channel: str, name: str) -> None:
        self._feed = InvalidationFeed(redis, channel, self, name) if redis is not None else None
        self._usable = self._feed is None

    @property
    def usable(self) -> bool:
        return self._usable

    def set_usable(self, usable: bool) -> None:  # pragma: no cover - defined by each cache
        raise NotImplementedError

    def forget(self, user_id: int) -> None:  # pragma: no cover - defined by each cache
        raise NotImplementedError

    @property
    def subscriptions(self) -> int:
        """How many times the change notices were subscribed to (production; 0 embedded)."""
        return self._feed.subscriptions if self._feed is not None else 0

    async def wait_subscribed(self, more_than: int = 0) -> None:
        """Until the notices are subscribed for the (more_than + 1)th time (readiness, tests)."""
        if self._feed is not None:
            await self._feed.wait_subscribed(more_than)

    @property
    def notices_heard(self) -> int:
        """How many change notices this process has applied (production; 0 embedded)."""
        return self._feed.heard if self._feed is not None else 0

    async def wait_heard(self, more_than: int) -> None:
        """Until a notice beyond the first `more_than` is applied; embedded, one loop turn
        (changes are applied in this process as they commit)."""
        if self._feed is not None:
            await self._feed.wait_heard(more_than)
        else:
            await asyncio.sleep(0)

    async def _publish(self, user_id: int) -> None:
        if self._feed is not None:
            await self._feed.publish(user_id)

    async def _publish_many(self, user_ids: Iterable[int]) -> None:
        if self._feed is not None:
            await self._feed.publish_many(user_ids)

    def _notice(self, user_id: int) -> tuple[str, str] | None:
        """The notice `_publish` sends, for a caller to send with its own Redis commands."""
        return self._feed.notice(user_id) if self._feed is not None else None

    def _start_listening(self, enabled: bool) -> None:
        if self._feed is not None and enabled:
            self._feed.start()

    async def aclose(self) -> None:
        if self._feed is not None:
            await self._feed.aclose()
