"""The per-user cache of `GET /chatroom` pages.

Keys carry a per-user version; every write that changes the list bumps the version after its
commit. A reader that raced with a write stores its (possibly stale) page under the old version,
which nobody reads again, so a client never sees a stale list after its own write.

The cache is an accelerator: if it is unreachable (Redis down) the list is read from the
database and nothing is stored; the request does not fail.
"""

from __future__ import annotations

import structlog
from redis.exceptions import RedisError

from gemini_backend.core.cache import Cache
from gemini_backend.core.metrics import CACHE_REQUESTS

log = structlog.get_logger(__name__)
_UNAVAILABLE = (RedisError, OSError)


class ChatroomListCache:
    def __init__(self, cache: Cache, ttl_seconds: int) -> None:
        self._cache = cache
        self._ttl = ttl_seconds

    @staticmethod
    def _version_key(user_id: int) -> str:
        return f"chatrooms:v:{user_id}"

    async def version(self, user_id: int) -> str | None:
        """The user's list version; None when the cache is off or unreachable."""
        if self._ttl <= 0:
            return None
        try:
            raw = await self._cache.get(self._version_key(user_id))
        except _UNAVAILABLE as exc:
            CACHE_REQUESTS.labels("chatroom_list", "error").inc()
            log.warning("cache_unavailable", error=type(exc).__name__)
            return None
        return raw.decode() if raw else "0"

    async def get(self, user_id: int, version: str | None, page: str) -> bytes | None:
        if version is None:
            return None
        try:
            body = await self._cache.get(f"chatrooms:{user_id}:{version}:{page}")
        except _UNAVAILABLE as exc:
            CACHE_REQUESTS.labels("chatroom_list", "error").inc()
            log.warning("cache_unavailable", error=type(exc).__name__)
            return None
        CACHE_REQUESTS.labels("chatroom_list", "miss" if body is None else "hit").inc()
        return body

    async def put(self, user_id: int, version: str | None, page: str, body: bytes) -> None:
        if version is None:
            return
        try:
            await self._cache.set(f"chatrooms:{user_id}:{version}:{page}", body, self._ttl)
        except _UNAVAILABLE as exc:
            log.warning("cache_unavailable", error=type(exc).__name__)

    async def invalidate(self, user_id: int) -> None:
        # The version outlives every entry written under an older one. An invalidation lost
        # to an outage leaves the user's cached list stale for at most CHATROOM_CACHE_TTL.
        try:
            await self._cache.incr(self._version_key(user_id), max(self._ttl * 2, 60))
        except _UNAVAILABLE as exc:
            log.warning("cache_invalidation_failed", user_id=user_id, error=type(exc).__name__)
