"""The tier follows from the subscription Stripe reports: `active` and `trialing` are Pro, and
`past_due` stays Pro for PAST_DUE_GRACE_DAYS after the paid period ends (Stripe is retrying the
card). Every other status (canceled, unpaid, incomplete, ...) and no subscription are Basic."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Protocol

from gemini_backend.users.schemas import Tier

PRO_STATUSES = frozenset({"active", "trialing"})


class PlanState(Protocol):
    """A subscription row, or the part of it cached with a signed-in user."""

    @property
    def status(self) -> str: ...

    @property
    def current_period_end(self) -> datetime | None: ...


def tier_for(subscription: PlanState | None, now: datetime, grace_days: int) -> Tier:
    if subscription is None:
        return "basic"
    if subscription.status in PRO_STATUSES:
        return "pro"
    if subscription.status == "past_due":
        end = subscription.current_period_end
        if end is None or now < end + timedelta(days=grace_days):
            return "pro"
    return "basic"
