"""Taking and giving back daily slots.

A slot is taken by ONE atomic upsert in the same transaction as the message insert:
`INSERT ... ON CONFLICT (user_id, day) DO UPDATE SET count = count + 1 WHERE count < limit
RETURNING count`. No row back means the limit is reached. A check-then-insert would let
concurrent requests all see "4 used" and all insert; the upsert's row lock (PostgreSQL) or the
write lock (SQLite) makes the increments strictly sequential, so 20 concurrent sends from one
Basic user get exactly 5 acceptances, across any number of API processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from gemini_backend.config import Settings
from gemini_backend.core.errors import TooManyRequests
from gemini_backend.core.metrics import QUOTA_REJECTIONS
from gemini_backend.core.sql import insert_for
from gemini_backend.quota.models import DailyUsage
from gemini_backend.users.schemas import Tier


class DailyLimitReached(TooManyRequests):
    code = "daily_limit_reached"


@dataclass(frozen=True, slots=True)
class QuotaState:
    limit: int | None
    used: int
    day: date
    resets_at: datetime

    @property
    def remaining(self) -> int | None:
        return None if self.limit is None else max(0, self.limit - self.used)

    def headers(self, now: datetime) -> dict[str, str]:
        headers = {"X-RateLimit-Reset": str(int((self.resets_at - now).total_seconds()))}
        if self.limit is not None:
            headers["X-RateLimit-Limit"] = str(self.limit)
            headers["X-RateLimit-Remaining"] = str(self.remaining)
        return headers


class Quota:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.zone = ZoneInfo(settings.quota_timezone)

    def limit_for(self, tier: Tier) -> int | None:
        return self.settings.pro_daily_limit if tier == "pro" else self.settings.basic_daily_limit

    def day_of(self, now: datetime) -> date:
        return now.astimezone(self.zone).date()

    def next_reset(self, now: datetime) -> datetime:
        local = now.astimezone(self.zone)
        midnight = datetime.combine(local.date() + timedelta(days=1), time(0), tzinfo=self.zone)
        return midnight.astimezone(now.tzinfo)

    async def reserve_daily_slot(
        self, session: AsyncSession, user_id: int, tier: Tier, now: datetime
    ) -> QuotaState:
        """Take one slot of today's quota or raise 429 `daily_limit_reached`."""
        limit = self.limit_for(tier)
        day = self.day_of(now)
        table = DailyUsage.__table__
        stmt = insert_for(session, table).values(user_id=user_id, day=day, count=1)
        stmt = stmt.on_conflict_do_update(
            index_elements=[table.c.user_id, table.c.day],
            set_={"count": table.c.count + 1},
            where=(table.c.count < limit) if limit is not None else None,
        ).returning(table.c.count)
        used = (await session.execute(stmt)).scalar_one_or_none()
        resets_at = self.next_reset(now)
        if used is None or (limit is not None and used > limit):
            QUOTA_REJECTIONS.labels("daily_limit").inc()
            state = QuotaState(limit, limit or 0, day, resets_at)
            raise DailyLimitReached(
                (resets_at - now).total_seconds(),
                f"The daily limit of {limit} messages is reached; it resets at local midnight.",
            ).with_headers(state.headers(now))
        return QuotaState(limit, used, day, resets_at)

    async def release_daily_slot(self, session: AsyncSession, user_id: int, day: date) -> None:
        """Give a slot back (a reply that failed or was blocked)."""
        await session.execute(
            update(DailyUsage)
            .where(DailyUsage.user_id == user_id, DailyUsage.day == day, DailyUsage.count > 0)
            .values(count=DailyUsage.count - 1)
        )

    async def state(
        self, session: AsyncSession, user_id: int, tier: Tier, now: datetime
    ) -> QuotaState:
        day = self.day_of(now)
        used = (
            await session.execute(
                select(DailyUsage.count).where(DailyUsage.user_id == user_id, DailyUsage.day == day)
            )
        ).scalar_one_or_none()
        return QuotaState(self.limit_for(tier), used or 0, day, self.next_reset(now))
