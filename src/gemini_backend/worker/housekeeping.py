"""The periodic purge of rows past their use, run by every sweeper (worker/runtime.py): expired
OTPs, expired refresh tokens, quiet sign-in guards, idempotency keys past their 24 h window,
uploads still pending ATTACHMENT_PENDING_MINUTES after they began (with their stored bytes),
stored objects of deleted rooms and accounts that a crash or an outage left undeleted.

Each table is purged in batches of PURGE_BATCH rows, a short transaction each, so the purge
never holds a lock for long (on SQLite, the single writer is free between batches). Several
sweepers purging at once only find fewer rows.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gemini_backend.attachments.service import Attachments
from gemini_backend.auth import repository as auth_repo
from gemini_backend.chat import repository as chat_repo
from gemini_backend.chat.sending import IDEMPOTENCY_WINDOW
from gemini_backend.config import Settings
from gemini_backend.core.clock import Clock

log = structlog.get_logger(__name__)

PURGE_BATCH = 500
# A sign-in guard's failure count is forgotten after this long without a failure (at least the
# lockout): no more guesses than the lockout's own cycle allows.
LOGIN_GUARD_QUIET = timedelta(days=1)

# One batch: delete at most `limit` rows in the session's transaction, return how many.
Batch = Callable[[AsyncSession, int], Awaitable[int]]


class Housekeeping:
    def __init__(
        self,
        settings: Settings,
        clock: Clock,
        sessionmaker: async_sessionmaker[AsyncSession],
        attachments: Attachments,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.sessionmaker = sessionmaker
        self.attachments = attachments

    async def purge(self, stop: asyncio.Event | None = None) -> dict[str, int]:
        """Purge every table; the rows deleted per table. `stop` set: end after the batch."""
        now = self.clock.now()
        settings = self.settings
        resend_after = timedelta(seconds=settings.otp_resend_seconds)
        quiet = max(LOGIN_GUARD_QUIET, timedelta(seconds=settings.otp_lockout_seconds))
        batches: dict[str, Batch] = {
            "otp_codes": lambda s, n: auth_repo.purge_expired_otps(
                s, now=now, resend_after=resend_after, limit=n
            ),
            "refresh_tokens": lambda s, n: auth_repo.purge_expired_refresh_tokens(
                s, now=now, limit=n
            ),
            "auth_guards": lambda s, n: auth_repo.purge_stale_auth_guards(
                s, now=now, quiet=quiet, limit=n
            ),
            "idempotency_keys": lambda s, n: chat_repo.purge_expired_idempotency_keys(
                s, cutoff=now - IDEMPOTENCY_WINDOW, limit=n
            ),
        }
        purged = {name: await self._in_batches(batch, stop) for name, batch in batches.items()}
        # Uploads that never finished: their objects, then their rows (the storage is no
        # part of a database transaction).
        purged["pending_attachments"] = await self.attachments.purge_pending()
        purged["storage_deletions"] = await self.attachments.purge_deletions()
        if any(purged.values()):
            log.info("purged", **purged)
        return purged

    async def _in_batches(self, batch: Batch, stop: asyncio.Event | None) -> int:
        total = 0
        while stop is None or not stop.is_set():
            async with self.sessionmaker() as session, session.begin():
                deleted = await batch(session, PURGE_BATCH)
            total += deleted
            if deleted < PURGE_BATCH:
                break
        return total
