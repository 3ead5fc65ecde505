"""The chatroom cache: pages of `GET /chatroom` and bodies of `GET /chatroom/{id}`, per user.

Two levels:

- **Shared (lists only)**: each user has a version; every write that changes the list bumps it
  after its commit, and a page is only ever stored under the version that was current when its
  database read began. Production keeps the pages in Redis (one hash per user; the
  invalidation bumps the version and deletes the hash in one transaction; a lookup is one round
  trip, the version and the page pipelined; a page is stored by a small script only if the
  version is still the one the reader saw). Embedded: the same rules in process memory.
- **In process (lists and room details)**: each API process keeps the bodies it served for up
  to CHATROOM_LOCAL_CACHE_SECONDS, so a repeated read costs no database or Redis round trip.
  Whatever changes what a user sees in their rooms calls `invalidate(user_id)` (the list
  changed: create, rename, delete, a send, a title) or `room_changed(user_id)` (only a room's
  messages changed: a reply claimed, finished, swept or cancelled) after its commit. The
  calling process drops the user's bodies before it answers; in production the same call
  publishes the user id on a Redis Pub/Sub channel (in the same script as the version bump
  for lists) and every API process drops that user's bodies when the notice arrives. The rules
  of the principal cache hold (core/notices.py): no caching while not subscribed, emptied on
  every (re)subscription, and a body read before a change is never stored after it (a
  generation counter, per user).

The cache is an accelerator: if Redis is unreachable, reads go to the database and nothing is
stored; the request does not fail. A notice lost with a process that died between its commit
and its publish leaves a body stale for at most CHATROOM_LOCAL_CACHE_SECONDS.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from gemini_backend.core.cache import Cache
from gemini_backend.core.metrics import CACHE_REQUESTS
from gemini_backend.core.notices import NoticeFed
from gemini_backend.core.redis import unavailable

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = structlog.get_logger(__name__)

_LIST_HIT = CACHE_REQUESTS.labels("chatroom_list", "hit")
_LIST_MISS = CACHE_REQUESTS.labels("chatroom_list", "miss")
_LIST_ERROR = CACHE_REQUESTS.labels("chatroom_list", "error")
_ROOM_HIT = CACHE_REQUESTS.labels("chatroom_detail", "hit")
_ROOM_MISS = CACHE_REQUESTS.labels("chatroom_detail", "miss")

# KEYS: version, pages hash. ARGV: version seen by the reader, page, body, ttl.
_PUT_IF_CURRENT = """
local current = redis.call('GET', KEYS[1]) or '0'
if current ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return 1
"""
# A new version: KEYS: version, pages hash, then one stream per entry to add (a job going
# along). ARGV: seconds the version outlives its pages, the notice's channel ('' for none)
# and message, then each entry's `data` field.
_BUMP = """
for i = 3, #KEYS do
  redis.call('XADD', KEYS[i], '*', 'data', ARGV[i + 1])
end
redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
if ARGV[2] ~= '' then
  redis.call('PUBLISH', ARGV[2], ARGV[3])
end
return 1
"""

# Bounds of the in-process level (per API process).
LOCAL_MAX_BYTES = 64 * 1024 * 1024
LOCAL_MAX_ENTRIES_PER_USER = 32
# Users whose last change is remembered for the generation check (older ones count as changed
# at the oldest remembered generation, which only ever refuses a store, never allows one).
_CHANGES_REMEMBERED = 100_000


# Stream entries (stream, `data`) added in the bump's own command: a send's job.
Along = Sequence[tuple[str, bytes]]


class SharedLists(Protocol):
    """The shared level of the lists: Redis (RedisLists) or process memory (MemoryLists),
    chosen once by services.py."""

    async def read(self, user_id: int, page: str) -> tuple[str, bytes | None]:
        """The user's current version and the page stored under it."""
        ...

    async def write(self, user_id: int, version: str, page: str, body: bytes, ttl: int) -> None:
        """Store the page under `version`, if it is still the current one."""
        ...

    async def bump(
        self, user_id: int, keep: int, notice: tuple[str, str] | None, along: Along
    ) -> None:
        """A new version (outliving its pages by `keep` seconds); with `along`'s entries and
        the notice in the same script when on Redis."""
        ...


class RedisLists:
    """Production: one hash of pages per user, with its version; a lookup is one round trip,
    the bump and a store each a small script (a store only if the version is still current)."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix
        self._put_script: Any = redis.register_script(_PUT_IF_CURRENT)
        self._bump_script: Any = redis.register_script(_BUMP)

    def _keys(self, user_id: int) -> tuple[str, str]:
        # One hash slot per user ({...}): the script's two keys stay together on a cluster.
        return (
            f"{self._prefix}:chatrooms:{{{user_id}}}:v",
            f"{self._prefix}:chatrooms:{{{user_id}}}:pages",
        )

    async def read(self, user_id: int, page: str) -> tuple[str, bytes | None]:
        version_key, pages_key = self._keys(user_id)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.get(version_key)
            pipe.hget(pages_key, page)
            raw_version, body = await pipe.execute()
        return (raw_version.decode() if raw_version else "0"), body

    async def write(self, user_id: int, version: str, page: str, body: bytes, ttl: int) -> None:
        await self._put_script(keys=list(self._keys(user_id)), args=[version, page, body, ttl])

    async def bump(
        self, user_id: int, keep: int, notice: tuple[str, str] | None, along: Along
    ) -> None:
        # One script rather than MULTI/EXEC: one command to pack and one reply to parse
        # (about half the client's CPU of the transaction, bench/README.md).
        channel, message = notice or ("", "")
        keys = [*self._keys(user_id), *(stream for stream, _ in along)]
        args = [keep, channel, message, *(data for _, data in along)]
        await self._bump_script(keys=keys, args=args)


class MemoryLists:
    """Embedded: the same rules in the process's memory cache (one process: no notices, and
    nothing goes along)."""

    def __init__(self, cache: Cache) -> None:
        self._cache = cache

    @staticmethod
    def _version_key(user_id: int) -> str:
        return f"chatrooms:v:{user_id}"

    async def read(self, user_id: int, page: str) -> tuple[str, bytes | None]:
        raw = await self._cache.get(self._version_key(user_id))
        version = raw.decode() if raw else "0"
        return version, await self._cache.get(f"chatrooms:{user_id}:{version}:{page}")

    async def write(self, user_id: int, version: str, page: str, body: bytes, ttl: int) -> None:
        await self._cache.set(f"chatrooms:{user_id}:{version}:{page}", body, ttl)

    async def bump(
        self, user_id: int, keep: int, notice: tuple[str, str] | None, along: Along
    ) -> None:
        await self._cache.incr(self._version_key(user_id), keep)


@dataclass(slots=True)
class Lookup:
    """What a reader found, and what it needs to store what it reads instead."""

    body: bytes | None
    version: str | None = None  # shared level: the version seen (None: do not store there)
    ticket: int | None = None  # in-process level: the generation seen (None: do not store)


@dataclass(slots=True)
class _Shelf:
    """One user's bodies in this process: key -> (expires at, body)."""

    entries: dict[str, tuple[float, bytes]] = field(default_factory=dict)
    size: int = 0


class ChatroomCache(NoticeFed):
    def __init__(
        self,
        shared: SharedLists,
        ttl_seconds: int,
        *,
        local_seconds: float = 10.0,
        redis: Redis | None = None,
        prefix: str = "",
        max_bytes: int = LOCAL_MAX_BYTES,
    ) -> None:
        self._shared = shared
        self._ttl = ttl_seconds
        # In-process level.
        self._local_seconds = local_seconds
        self._list_seconds = min(local_seconds, ttl_seconds)
        self._max_bytes = max_bytes
        self._shelves: OrderedDict[int, _Shelf] = OrderedDict()
        self._bytes = 0
        self._generation = 0
        self._changed_at: dict[int, int] = {}
        self._changed_floor = 0
        self._listen(redis, f"{prefix}:chat-changed", "chatroom")

    # --- lists ---------------------------------------------------------------------------

    async def lookup(self, user_id: int, page: str) -> Lookup:
        """A page of the user's list: from this process, else from the shared level. Pass the
        result to `put` with the page read from the database when `body` is None."""
        if self._ttl <= 0:
            return Lookup(None)
        ticket = self._generation
        body = self.list_peek(user_id, page)
        if body is not None:
            return Lookup(body)
        try:
            version, body = await self._shared.read(user_id, page)
        except unavailable() as exc:
            _LIST_ERROR.inc()
            log.warning("cache_unavailable", error=type(exc).__name__)
            return Lookup(None)
        if body is None:
            _LIST_MISS.inc()
            return Lookup(None, version, ticket)
        _LIST_HIT.inc()
        self._local_put(user_id, f"list:{page}", ticket, body, self._list_seconds)
        return Lookup(body)

    async def put(self, user_id: int, found: Lookup, page: str, body: bytes) -> None:
        self._local_put(user_id, f"list:{page}", found.ticket, body, self._list_seconds)
        if found.version is None:
            return
        try:
            await self._shared.write(user_id, found.version, page, body, self._ttl)
        except unavailable() as exc:
            log.warning("cache_unavailable", error=type(exc).__name__)

    # --- room details (in process only) --------------------------------------------------

    def room_lookup(self, user_id: int, room_id: int) -> Lookup:
        ticket = self._generation
        body = self.room_peek(user_id, room_id)
        if body is None:
            _ROOM_MISS.inc()
        return Lookup(body, ticket=ticket)

    def room_put(self, user_id: int, found: Lookup, room_id: int, body: bytes) -> None:
        self._local_put(user_id, f"room:{room_id}", found.ticket, body, self._local_seconds)

    # --- peeks: memory only, for reads answered before routing (chat/fastpath.py) ---------

    def list_peek(self, user_id: int, page: str) -> bytes | None:
        body = self._local_get(user_id, f"list:{page}") if self._ttl > 0 else None
        if body is not None:
            _LIST_HIT.inc()
        return body

    def room_peek(self, user_id: int, room_id: int) -> bytes | None:
        body = self._local_get(user_id, f"room:{room_id}")
        if body is not None:
            _ROOM_HIT.inc()
        return body

    # --- changes -------------------------------------------------------------------------

    async def invalidate(self, user_id: int, *, along: Along = ()) -> None:
        """The user's list changed (and maybe a room): call after the commit. `along`: stream
        entries (the send's job) added by the invalidation's own script, in its one round
        trip; only when the cache is on Redis (services.py then gives the sender that way)."""
        self.forget(user_id)
        # The version outlives every page stored under it. An invalidation lost to an outage
        # leaves the user's cached list stale for at most CHATROOM_CACHE_TTL.
        keep = max(self._ttl * 2, 60)
        try:
            await self._shared.bump(user_id, keep, self._notice(user_id), along)
        except unavailable() as exc:
            log.warning("cache_invalidation_failed", user_id=user_id, error=type(exc).__name__)
            if along:
                raise  # what went along is lost too: the caller's to report

    async def room_changed(self, user_id: int) -> None:
        """Only the messages of one of the user's rooms changed: call after the commit."""
        self.forget(user_id)
        try:
            await self._publish(user_id)
        except unavailable() as exc:
            log.warning("cache_invalidation_failed", user_id=user_id, error=type(exc).__name__)

    async def rooms_changed(self, user_ids: Collection[int]) -> None:
        """`room_changed` for each of `user_ids`, their notices in one round trip."""
        if not user_ids:
            return
        for user_id in user_ids:
            self.forget(user_id)
        try:
            await self._publish_many(user_ids)
        except unavailable() as exc:
            log.warning("cache_invalidation_failed", users=len(user_ids), error=type(exc).__name__)

    def room_changed_notice(self, user_id: int) -> tuple[str, str] | None:
        """`room_changed`, with the notice to other processes left to the caller: a Pub/Sub
        (channel, message) to send in its own Redis round trip after the commit (None when there
        are no other processes to tell)."""
        self.forget(user_id)
        return self._notice(user_id)

    def forget(self, user_id: int) -> None:
        """Drop the user's bodies in this process; reads that began before are not stored."""
        self._generation += 1
        self._changed_at.pop(user_id, None)
        self._changed_at[user_id] = self._generation
        if len(self._changed_at) > _CHANGES_REMEMBERED:
            for old in list(self._changed_at)[: _CHANGES_REMEMBERED // 2]:
                self._changed_floor = max(self._changed_floor, self._changed_at.pop(old))
        shelf = self._shelves.pop(user_id, None)
        if shelf is not None:
            self._bytes -= shelf.size

    def set_usable(self, usable: bool) -> None:
        """Empty the in-process level; use it from now on, or not at all."""
        self._generation += 1
        self._changed_floor = self._generation
        self._changed_at.clear()
        self._shelves.clear()
        self._bytes = 0
        self._usable = usable

    def _local_get(self, user_id: int, key: str) -> bytes | None:
        if not self._usable:
            return None
        shelf = self._shelves.get(user_id)
        if shelf is None:
            return None
        entry = shelf.entries.get(key)
        if entry is None:
            return None
        if entry[0] <= time.monotonic():
            del shelf.entries[key]
            shelf.size -= len(entry[1])
            self._bytes -= len(entry[1])
            return None
        self._shelves.move_to_end(user_id)
        return entry[1]

    def _local_put(
        self, user_id: int, key: str, ticket: int | None, body: bytes, seconds: float
    ) -> None:
        if ticket is None or not self._usable or seconds <= 0:
            return
        if self._changed_at.get(user_id, self._changed_floor) > ticket:
            return  # the user's data changed after this body's read began
        shelf = self._shelves.get(user_id)
        if shelf is None:
            shelf = self._shelves[user_id] = _Shelf()
        else:
            self._shelves.move_to_end(user_id)
        old = shelf.entries.pop(key, None)
        if old is not None:
            shelf.size -= len(old[1])
            self._bytes -= len(old[1])
        if len(shelf.entries) >= LOCAL_MAX_ENTRIES_PER_USER:
            self._bytes -= shelf.size
            shelf.entries.clear()
            shelf.size = 0
        shelf.entries[key] = (time.monotonic() + seconds, body)
        shelf.size += len(body)
        self._bytes += len(body)
        while self._bytes > self._max_bytes and self._shelves:
            _, evicted = self._shelves.popitem(last=False)
            self._bytes -= evicted.size

    # --- lifecycle (API processes subscribe; workers only publish) -------------------------

    def start(self) -> None:
        self._start_listening(self._local_seconds > 0)
