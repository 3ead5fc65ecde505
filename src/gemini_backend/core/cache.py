"""A small key-value cache: in-process (embedded) or Redis (production, shared by every API
process). Values are bytes; keys are namespaced by REDIS_KEY_PREFIX."""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from redis.asyncio import Redis


class Cache(Protocol):
    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, ttl_seconds: int) -> None: ...

    async def delete(self, key: str) -> None: ...

    async def incr(self, key: str, ttl_seconds: int) -> int:
        """Increment a counter, (re)setting its time to live."""
        ...


class MemoryCache:
    """An LRU dict with expiry, for one process."""

    def __init__(self, max_entries: int = 50_000) -> None:
        self._data: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._max_entries = max_entries

    def _live(self, key: str) -> bytes | None:
        item = self._data.get(key)
        if item is None:
            return None
        expires, value = item
        if expires <= time.monotonic():
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return value

    def _put(self, key: str, value: bytes, ttl_seconds: int) -> None:
        self._data[key] = (time.monotonic() + ttl_seconds, value)
        self._data.move_to_end(key)
        while len(self._data) > self._max_entries:
            self._data.popitem(last=False)

    async def get(self, key: str) -> bytes | None:
        return self._live(key)

    async def set(self, key: str, value: bytes, ttl_seconds: int) -> None:
        if ttl_seconds > 0:
            self._put(key, value, ttl_seconds)

    async def delete(self, key: str) -> None:
        self._data.pop(key, None)

    async def incr(self, key: str, ttl_seconds: int) -> int:
        current = self._live(key)
        value = (int(current) if current else 0) + 1
        self._put(key, str(value).encode(), ttl_seconds)
        return value


class RedisCache:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix

    def _key(self, key: str) -> str:
        return f"{self._prefix}:{key}"

    async def get(self, key: str) -> bytes | None:
        value = await self._redis.get(self._key(key))
        return value.encode() if isinstance(value, str) else value

    async def set(self, key: str, value: bytes, ttl_seconds: int) -> None:
        if ttl_seconds > 0:
            await self._redis.set(self._key(key), value, ex=ttl_seconds)

    async def delete(self, key: str) -> None:
        await self._redis.delete(self._key(key))

    async def incr(self, key: str, ttl_seconds: int) -> int:
        full = self._key(key)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incr(full)
            pipe.expire(full, ttl_seconds)
            value, _ = await pipe.execute()
        return int(value)
