"""The per-user cache of `GET /chatroom` pages.

Each user has a version; every write that changes the list bumps it after its commit, and a page
is only ever stored under the version that was current when its database read began. A reader
that raced with a write therefore cannot leave a stale page behind, so a client never sees a
stale list after its own write.

Production (Redis, shared by every API process): the user's pages live in one hash, and the
invalidation bumps the version and deletes the hash in one transaction. A lookup is one round
trip (the version and the page, pipelined); a page is stored by a small script only if the
version is still the one the reader saw. Embedded: the same rules in process memory.

The cache is an accelerator: if it is unreachable (Redis down) the list is read from the
database and nothing is stored; the request does not fail.
"""

from __future__ import annotations

from typing import Any

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from gemini_backend.core.cache import Cache
from gemini_backend.core.metrics import CACHE_REQUESTS

log = structlog.get_logger(__name__)
_UNAVAILABLE = (RedisError, OSError)

_HIT = CACHE_REQUESTS.labels("chatroom_list", "hit")
_MISS = CACHE_REQUESTS.labels("chatroom_list", "miss")
_ERROR = CACHE_REQUESTS.labels("chatroom_list", "error")

# KEYS: version, pages hash. ARGV: version seen by the reader, page, body, ttl.
_PUT_IF_CURRENT = """
local current = redis.call('GET', KEYS[1]) or '0'
if current ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return 1
"""

Lookup = tuple[str | None, bytes | None]


class ChatroomListCache:
    def __init__(
        self, cache: Cache, ttl_seconds: int, *, redis: Redis | None = None, prefix: str = ""
    ) -> None:
        self._cache = cache  # embedded: the process's memory cache
        self._ttl = ttl_seconds
        self._redis = redis
        self._prefix = prefix
        self._put_script: Any = redis.register_script(_PUT_IF_CURRENT) if redis else None

    def _version_key(self, user_id: int) -> str:
        return f"chatrooms:v:{user_id}"

    def _redis_keys(self, user_id: int) -> tuple[str, str]:
        # One hash slot per user ({...}): the script's two keys stay together on a cluster.
        return (
            f"{self._prefix}:chatrooms:{{{user_id}}}:v",
            f"{self._prefix}:chatrooms:{{{user_id}}}:pages",
        )

    async def lookup(self, user_id: int, page: str) -> Lookup:
        """(version, cached page). The version is None when the cache is off or unreachable;
        pass it back to `put` after reading the page from the database."""
        if self._ttl <= 0:
            return None, None
        try:
            if self._redis is not None:
                version_key, pages_key = self._redis_keys(user_id)
                async with self._redis.pipeline(transaction=False) as pipe:
                    pipe.get(version_key)
                    pipe.hget(pages_key, page)
                    raw_version, body = await pipe.execute()
                version = raw_version.decode() if raw_version else "0"
            else:
                raw = await self._cache.get(self._version_key(user_id))
                version = raw.decode() if raw else "0"
                body = await self._cache.get(f"chatrooms:{user_id}:{version}:{page}")
        except _UNAVAILABLE as exc:
            _ERROR.inc()
            log.warning("cache_unavailable", error=type(exc).__name__)
            return None, None
        (_MISS if body is None else _HIT).inc()
        return version, body

    async def put(self, user_id: int, version: str | None, page: str, body: bytes) -> None:
        if version is None:
            return
        try:
            if self._redis is not None:
                await self._put_script(
                    keys=list(self._redis_keys(user_id)), args=[version, page, body, self._ttl]
                )
            else:
                await self._cache.set(f"chatrooms:{user_id}:{version}:{page}", body, self._ttl)
        except _UNAVAILABLE as exc:
            log.warning("cache_unavailable", error=type(exc).__name__)

    async def invalidate(self, user_id: int) -> None:
        # The version outlives every page stored under it. An invalidation lost to an outage
        # leaves the user's cached list stale for at most CHATROOM_CACHE_TTL.
        keep = max(self._ttl * 2, 60)
        try:
            if self._redis is not None:
                version_key, pages_key = self._redis_keys(user_id)
                async with self._redis.pipeline(transaction=True) as pipe:
                    pipe.incr(version_key)
                    pipe.expire(version_key, keep)
                    pipe.delete(pages_key)
                    await pipe.execute()
            else:
                await self._cache.incr(self._version_key(user_id), keep)
        except _UNAVAILABLE as exc:
            log.warning("cache_invalidation_failed", user_id=user_id, error=type(exc).__name__)
