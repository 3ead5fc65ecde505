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

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
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


class TokenBudgetExceeded(TooManyRequests):
    code = "token_budget_exceeded"
    detail = "The monthly token budget is spent; it resets on the 1st at 00:00 UTC."


def _seconds_to(moment: datetime, now: datetime) -> str:
    return str(max(0, int((moment - now).total_seconds())))


@dataclass(frozen=True, slots=True)
class TokenBudget:
    """A user's month against the budget: tokens settled (`used`) and held by replies in flight
    (`reserved`)."""

    limit: int | None
    used: int
    reserved: int
    month: date
    resets_at: datetime

    @property
    def remaining(self) -> int | None:
        return None if self.limit is None else max(0, self.limit - self.used - self.reserved)

    def headers(self, now: datetime) -> dict[str, str]:
        if self.limit is None:
            return {}
        return {
            "X-TokenBudget-Limit": str(self.limit),
            "X-TokenBudget-Remaining": str(self.remaining),
            "X-TokenBudget-Reset": _seconds_to(self.resets_at, now),
        }


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
    tokens: TokenBudget | None = None  # None: no monthly token budget is configured

    @property
    def remaining(self) -> int | None:
        return None if self.limit is None else max(0, self.limit - self.used)

    def headers(self, now: datetime) -> dict[str, str]:
        headers = {"X-RateLimit-Reset": str(int((self.resets_at - now).total_seconds()))}
        if self.limit is not None:
            headers["X-RateLimit-Limit"] = str(self.limit)
            headers["X-RateLimit-Remaining"] = str(self.remaining)
        if self.tokens is not None:
            headers.update(self.tokens.headers(now))
        return headers


def month_of(now: datetime) -> date:
    """The first day of `now`'s calendar month in UTC."""
    utc = now.astimezone(UTC)
    return date(utc.year, utc.month, 1)


def next_month(now: datetime) -> datetime:
    """00:00 UTC of the 1st of the month after `now`'s."""
    month = month_of(now)
    following = date(month.year + month.month // 12, month.month % 12 + 1, 1)
    return datetime.combine(following, time(0), tzinfo=UTC)


class Quota:
    def __init__(self, settings: Settings, insert: Callable[..., Any] | None = None) -> None:
        """`insert`: the database's own `insert` (`postgresql.insert` or `sqlite.insert` of
        `sqlalchemy.dialects`, chosen by services.py) for the token budget's upsert; None: no
        budget can be enforced (the accounting needs it only when one is configured)."""
        self.settings = settings
        self.zone = ZoneInfo(settings.quota_timezone)
        self._insert = insert
        self.tokens_tracked = insert is not None and (
            settings.monthly_token_budget_basic is not None
            or settings.monthly_token_budget_pro is not None
        )

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
        tokens = None
        if self.tokens_tracked:
            month = month_of(now)
            spent, reserved = await repo.month_tokens(session, user_id, month)
            tokens = TokenBudget(
                self.token_limit_for(tier), spent, reserved, month, next_month(now)
            )
        return QuotaState(self.limit_for(tier), used or 0, day, self.next_reset(now), tokens)

    # --- the monthly token budget ---------------------------------------------------------------
    def token_limit_for(self, tier: Tier) -> int | None:
        settings = self.settings
        return (
            settings.monthly_token_budget_pro
            if tier == "pro"
            else settings.monthly_token_budget_basic
        )

    async def reserve_tokens(
        self, db: Any, quota: QuotaState, user_id: int, tier: Tier, reply_id: int, now: datetime
    ) -> QuotaState:
        """In the send's transaction (`db`: its session or connection), after its daily slot:
        reserve TOKEN_BUDGET_RESERVE tokens for `reply_id`, or refuse the send with 429
        `token_budget_exceeded` (the caller rolls the transaction back). `quota` with the
        month's budget after it; unchanged when no budget is configured."""
        if not self.tokens_tracked or self._insert is None:
            return quota
        limit = self.token_limit_for(tier)
        month, resets_at = month_of(now), next_month(now)
        reserve = self.settings.token_budget_reserve
        params: dict[str, Any] = {
            "budget_user": user_id,
            "budget_month": month,
            "reserve": reserve,
        }
        if limit is not None:
            params["budget_limit"] = limit
        upsert = repo.token_reserve_upsert(self._insert, limit is not None)
        found = await repo.reserve_tokens(db, upsert, params, reply_id)
        if found is None:
            QUOTA_REJECTIONS.labels("token_budget").inc()
            spent = TokenBudget(limit, limit or 0, 0, month, resets_at)
            raise TokenBudgetExceeded((resets_at - now).total_seconds()).with_headers(
                spent.headers(now)
            )
        used, reserved = found
        return replace(quota, tokens=TokenBudget(limit, used, reserved, month, resets_at))

    async def settle_tokens(self, session: AsyncSession, reply_id: int, spent: int) -> None:
        """The reply ended (in this transaction): its reservation, if it holds one, becomes the
        `spent` tokens the provider reported."""
        if self.tokens_tracked:
            await repo.settle_reservation(session, reply_id, spent)

    async def release_room_tokens(self, session: AsyncSession, room_id: int) -> None:
        """The room is being deleted in this transaction: its replies' reservations go back."""
        if self.tokens_tracked:
            await repo.release_room_reservations(session, room_id)

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
