"""The per-user cache of `GET /chatroom` pages.

Keys carry a per-user version; every write that changes the list bumps the version after its
commit. A reader that raced with a write stores its (possibly stale) page under the old version,
which nobody reads again, so a client never sees a stale list after its own write.
"""

from __future__ import annotations

from gemini_backend.core.cache import Cache


class ChatroomListCache:
    def __init__(self, cache: Cache, ttl_seconds: int) -> None:
        self._cache = cache
        self._ttl = ttl_seconds

    @staticmethod
    def _version_key(user_id: int) -> str:
        return f"chatrooms:v:{user_id}"

    async def version(self, user_id: int) -> str:
        raw = await self._cache.get(self._version_key(user_id))
        return raw.decode() if raw else "0"

    async def get(self, user_id: int, version: str, page: str) -> bytes | None:
        if self._ttl <= 0:
            return None
        return await self._cache.get(f"chatrooms:{user_id}:{version}:{page}")

    async def put(self, user_id: int, version: str, page: str, body: bytes) -> None:
        await self._cache.set(f"chatrooms:{user_id}:{version}:{page}", body, self._ttl)

    async def invalidate(self, user_id: int) -> None:
        # The version outlives every entry written under an older one.
        await self._cache.incr(self._version_key(user_id), max(self._ttl * 2, 60))
