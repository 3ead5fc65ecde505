"""Request throttles on the `limits` library: in-process storage embedded, Redis in production,
so a limit holds across every API process."""

from __future__ import annotations

import time

from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter

from gemini_backend.config import Settings
from gemini_backend.core.errors import TooManyRequests


def _redis_storage_uri(redis_url: str) -> str:
    for scheme in ("redis://", "rediss://", "unix://"):
        if redis_url.startswith(scheme):
            return "async+" + redis_url
    return redis_url


class Throttle:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._limiter = MovingWindowRateLimiter(storage)

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
