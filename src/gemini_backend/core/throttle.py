"""Request throttles on the `limits` library: in-process storage embedded, Redis in production,
so a limit holds across every API process."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, cast

from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.storage.redis.redispy import RedispyBridge
from limits.aio.strategies import MovingWindowRateLimiter

from gemini_backend.config import Settings
from gemini_backend.core.errors import TooManyRequests

if TYPE_CHECKING:
    from redis.asyncio import Redis


def _redis_storage_uri(redis_url: str) -> str:
    for scheme in ("redis://", "rediss://", "unix://"):
        if redis_url.startswith(scheme):
            return "async+" + redis_url
    return redis_url


def _memory_give_back(storage: MemoryStorage) -> Callable[[str], Awaitable[None]]:
    async def give_back(key: str) -> None:
        if events := storage.events.get(key):
            del events[0]  # the newest entry (the window's list is newest first)

    return give_back


def _redis_give_back(storage: RedisStorage) -> Callable[[str], Awaitable[None]]:
    bridge = cast(RedispyBridge, storage.bridge)  # from_settings asks for redis-py

    async def give_back(key: str) -> None:
        client = cast("Redis", bridge.get_connection())
        await client.lpop(bridge.prefixed_key(key))  # the newest entry

    return give_back


class Throttle:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._limiter = MovingWindowRateLimiter(storage)
        # The moving window keeps one timestamp per hit, newest first; giving one back drops
        # the newest. A concurrent hit's may go instead of this one's: the count is the same
        # and the window ends at most that gap earlier.
        self._give_back = (
            _redis_give_back(storage)
            if isinstance(storage, RedisStorage)
            else _memory_give_back(storage)
            if isinstance(storage, MemoryStorage)
            else None
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> Throttle:
        if settings.redis_url:
            return cls(
                RedisStorage(
                    _redis_storage_uri(settings.redis_url),
                    implementation="redispy",
                    key_prefix=f"{settings.redis_key_prefix}:limits",
                )
            )
        return cls(MemoryStorage())

    async def hit(self, limit: str | RateLimitItem, *identifiers: str, detail: str) -> None:
        """Count one hit; raise 429 with `Retry-After` when the limit is already used up."""
        item = parse(limit) if isinstance(limit, str) else limit
        if not await self._limiter.hit(item, *identifiers):
            raise await self._refusal(item, identifiers, detail)

    async def give_back(self, limit: str | RateLimitItem, *identifiers: str) -> None:
        """Undo one `hit` that was let through: the request it admitted was refused later."""
        if self._give_back is None:
            raise NotImplementedError(f"no give-back for {type(self.storage).__name__}")
        item = parse(limit) if isinstance(limit, str) else limit
        await self._give_back(item.key_for(*identifiers))

    async def count(self, limit: str | RateLimitItem, *identifiers: str) -> None:
        """Count one hit that has already happened (nothing to refuse any more)."""
        item = parse(limit) if isinstance(limit, str) else limit
        await self._limiter.hit(item, *identifiers)

    async def check(self, limit: str | RateLimitItem, *identifiers: str, detail: str) -> None:
        """Raise 429 when the limit is used up, without counting a hit."""
        item = parse(limit) if isinstance(limit, str) else limit
        if not await self._limiter.test(item, *identifiers):
            raise await self._refusal(item, identifiers, detail)

    async def _refusal(
        self, item: RateLimitItem, identifiers: tuple[str, ...], detail: str
    ) -> TooManyRequests:
        stats = await self._limiter.get_window_stats(item, *identifiers)
        return TooManyRequests(stats.reset_time - time.time(), detail)

    async def ping(self) -> None:
        if not await self.storage.check():
            raise ConnectionError("throttle storage is unreachable")
