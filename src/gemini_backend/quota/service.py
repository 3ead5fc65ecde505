"""Taking and giving back daily slots.

A slot is taken by ONE atomic upsert in the same transaction as the message insert:
`INSERT ... ON CONFLICT (user_id, day) DO UPDATE SET count = count + 1 WHERE count < limit
RETURNING count`. No row back means the limit is reached. A check-then-insert would let
concurrent requests all see "4 used" and all insert; the upsert's row lock (PostgreSQL) or the
write lock (SQLite) makes the increments strictly sequential, so 20 concurrent sends from one
Basic user get exactly 5 acceptances, across any number of API processes.

The upsert is built once per dialect (values bound per execution) and is also the first step of
the send's single statement on PostgreSQL (chat/repository.py); the statements live in
quota/repository.py, which takes the slot, inserts the
messages only if it was taken, and leaves the verdict to `Quota.admit`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncSession

from gemini_backend.config import Settings
from gemini_backend.core.errors import TooManyRequests
from gemini_backend.core.metrics import QUOTA_REJECTIONS
from gemini_backend.quota import repository as repo
from gemini_backend.users.tier import Tier


class DailyLimitReached(TooManyRequests):
    code = "daily_limit_reached"


@dataclass(frozen=True, slots=True)
class DayUsage:
    date: date
    messages: int
    prompt_tokens: int
    output_tokens: int
    thinking_tokens: int
    cached_tokens: int


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

    def slot_params(self, user_id: int, tier: Tier, now: datetime) -> dict[str, Any]:
        """The values of `daily_slot_upsert(insert, limited=limit is not None)`."""
        params: dict[str, Any] = {"slot_user": user_id, "slot_day": self.day_of(now)}
        limit = self.limit_for(tier)
        if limit is not None:
            params["slot_limit"] = limit
        return params

    def admit(self, used: int | None, tier: Tier, now: datetime) -> QuotaState:
        """The verdict on the upsert's result (None: no row came back, the limit is reached):
        the caller's quota after the slot, or 429 `daily_limit_reached`."""
        limit = self.limit_for(tier)
        day = self.day_of(now)
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
        await repo.give_back_slot(session, user_id, day)

    async def state(
        self, session: AsyncSession, user_id: int, tier: Tier, now: datetime
    ) -> QuotaState:
        day = self.day_of(now)
        used = await repo.used_on(session, user_id, day)
        return QuotaState(self.limit_for(tier), used or 0, day, self.next_reset(now))

    async def history(
        self, session: AsyncSession, user_id: int, days: int, now: datetime
    ) -> list[DayUsage]:
        """The last `days` quota days up to today, oldest first, each with its replies and
        their tokens (zeros for a day without any)."""
        today = self.day_of(now)
        since = today - timedelta(days=days - 1)
        found = await repo.tokens_per_day(session, user_id, since, today)
        return [
            DayUsage(day, *found.get(day, (0, 0, 0, 0, 0)))
            for day in (since + timedelta(days=n) for n in range(days))
        ]
