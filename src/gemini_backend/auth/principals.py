"""Who is signed in: the user and plan behind an access token, cached in process memory.

Every signed-in request needs the user, the plan (for the tier) and proof that the token's session
is still live. Reading them from the database on each request was most of the cost of the
cheapest routes (`GET /user/me`, a cached `GET /chatroom`), so each API process keeps what it read
for PRINCIPAL_CACHE_SECONDS and drops it as soon as it may be wrong:

- Anything that changes what is cached (a session revoked: logout, password change or reset, a
  replayed refresh token; a subscription change from a webhook) calls `invalidate(user_id)` after
  its transaction commits. The process that made the change drops its entries before it answers,
  so the change holds at once there.
- In production the same call publishes the user id on a Redis Pub/Sub channel; every API
  process listens and drops that user's entries when the notice arrives (well under a
  millisecond after the commit on a healthy Redis).
- While a process is not subscribed (starting, Redis down, the connection lost or silent) it
  does not use its cache at all: every request reads the database as if there were no cache,
  and the cache is emptied whenever the subscription is (re)established, so a notice missed
  while disconnected cannot leave a stale entry behind. A subscription that goes silent is
  noticed by a ping that gets no answer (PING every few seconds on the Pub/Sub connection).
- An entry filled from a read that started before an invalidation is not stored (a generation
  counter), and no request that arrives after an invalidation joins such a read (requests
  missing the same entry at the same moment share one read), so a logout racing a request that
  was reading the session cannot be undone by it.
- PRINCIPAL_CACHE_SECONDS bounds the age of any entry whatever happens (0 turns the cache off).

The read on a miss is one Core `SELECT` into a plain frozen dataclass (no ORM identity map or
instance loading), on a connection of its own that is returned before the route runs, so a
request never holds two pooled connections.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncEngine

from gemini_backend.auth.models import AuthSession
from gemini_backend.billing.models import Subscription
from gemini_backend.core.notices import NoticeFed
from gemini_backend.users.models import User

if TYPE_CHECKING:
    from redis.asyncio import Redis


@dataclass(frozen=True, slots=True)
class Plan:
    """The part of the subscription the tier depends on (see users.tier.tier_for)."""

    status: str
    current_period_end: datetime | None


@dataclass(frozen=True, slots=True)
class SignedInUser:
    """The signed-in user as read when the request started; never written back."""

    id: int
    session_id: int
    mobile_number: str
    name: str | None
    email: str | None
    has_password: bool
    created_at: datetime
    subscription: Plan | None


_users = User.__table__
_sessions = AuthSession.__table__
_subscriptions = Subscription.__table__

# Built once; values are bound per execution.
_PRINCIPAL = (
    select(
        _users.c.id,
        _users.c.mobile_number,
        _users.c.name,
        _users.c.email,
        _users.c.password_hash.is_not(None).label("has_password"),
        _users.c.created_at,
        _subscriptions.c.status,
        _subscriptions.c.current_period_end,
    )
    .select_from(
        _users.join(_sessions, _sessions.c.user_id == _users.c.id).outerjoin(
            _subscriptions, _subscriptions.c.user_id == _users.c.id
        )
    )
    .where(
        _users.c.id == bindparam("user_id"),
        _sessions.c.id == bindparam("session_id"),
        _sessions.c.revoked_at.is_(None),
    )
)


class Principals(NoticeFed):
    """The cache and the reads behind it, one per API process."""

    def __init__(
        self,
        engine: AsyncEngine,
        ttl_seconds: float,
        *,
        redis: Redis | None = None,
        channel: str = "gb:principal-changed",
        max_entries: int = 50_000,
    ) -> None:
        self._engine = engine
        self._ttl = ttl_seconds
        self._max_entries = max_entries
        self._entries: OrderedDict[tuple[int, int], tuple[float, SignedInUser]] = OrderedDict()
        self._sessions_of: dict[int, set[int]] = {}
        self._generation = 0
        self._reading: dict[tuple[int, int], asyncio.Future[SignedInUser | None]] = {}
        self._listen(redis, channel, "principal")

    # --- lookups -------------------------------------------------------------------------

    async def get(self, user_id: int, session_id: int) -> SignedInUser | None:
        """The user behind a live session, or None if the session is revoked or unknown."""
        key = (user_id, session_id)
        caching = self._usable and self._ttl > 0
        if caching:
            hit = self.cached(user_id, session_id)
            if hit is not None:
                return hit
            # Requests that miss together (an entry just expired under load) share one read.
            pending = self._reading.get(key)
            if pending is not None:
                return await asyncio.shield(pending)
        generation = self._generation
        read = asyncio.ensure_future(self._read(user_id, session_id))
        if caching:
            self._reading[key] = read
        try:
            found = await asyncio.shield(read)
        finally:
            if self._reading.get(key) is read:
                del self._reading[key]
        if found is not None and caching and self._usable and generation == self._generation:
            self._store(key, found)
        return found

    def cached(self, user_id: int, session_id: int) -> SignedInUser | None:
        """The live entry this process holds, if any, without reading or waiting (`get`, and
        reads answered before routing, chat/fastpath.py); None means: ask `get`."""
        if not self._usable or self._ttl <= 0:
            return None
        key = (user_id, session_id)
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= time.monotonic():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry[1]

    async def _read(self, user_id: int, session_id: int) -> SignedInUser | None:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(_PRINCIPAL, {"user_id": user_id, "session_id": session_id})
            ).first()
        if row is None:
            return None
        plan = None if row.status is None else Plan(row.status, row.current_period_end)
        return SignedInUser(
            id=row.id,
            session_id=session_id,
            mobile_number=row.mobile_number,
            name=row.name,
            email=row.email,
            has_password=bool(row.has_password),
            created_at=row.created_at,
            subscription=plan,
        )

    # --- changes -------------------------------------------------------------------------

    async def invalidate(self, user_id: int) -> None:
        """Forget this user here and tell the other API processes. Call after the commit."""
        self.forget(user_id)
        await self._publish(user_id)

    def forget(self, user_id: int) -> None:
        self._generation += 1
        # A request arriving from now on must not join a read that began before the change.
        for key in [key for key in self._reading if key[0] == user_id]:
            del self._reading[key]
        for session_id in self._sessions_of.pop(user_id, ()):
            self._entries.pop((user_id, session_id), None)

    def clear(self) -> None:
        self._generation += 1
        self._reading.clear()
        self._entries.clear()
        self._sessions_of.clear()

    def set_usable(self, usable: bool) -> None:
        self.clear()
        self._usable = usable

    def _store(self, key: tuple[int, int], value: SignedInUser) -> None:
        self._entries[key] = (time.monotonic() + self._ttl, value)
        self._entries.move_to_end(key)
        self._sessions_of.setdefault(key[0], set()).add(key[1])
        while len(self._entries) > self._max_entries:
            old, _ = self._entries.popitem(last=False)
            self._unindex(old)

    def _drop(self, key: tuple[int, int]) -> None:
        self._entries.pop(key, None)
        self._unindex(key)

    def _unindex(self, key: tuple[int, int]) -> None:
        sessions = self._sessions_of.get(key[0])
        if sessions is not None:
            sessions.discard(key[1])
            if not sessions:
                del self._sessions_of[key[0]]

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        self._start_listening(self._ttl > 0)
