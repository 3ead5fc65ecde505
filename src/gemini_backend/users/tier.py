"""The tier follows from the subscription Stripe reports: `active` and `trialing` are Pro, and
`past_due` stays Pro for PAST_DUE_GRACE_DAYS after the paid period ends (Stripe is retrying the
card). Every other status (canceled, unpaid, incomplete, ...) and no subscription are Basic.

The one home of the tier rule (a user's plan): users/, quota/, chat/ and billing/ ask
`tier_of`; billing/ only records the subscriptions it is computed from."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal, Protocol

from gemini_backend.config import Settings

Tier = Literal["basic", "pro"]

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


class HasPlan(Protocol):
    """A user row, or a signed-in user, with the subscription loaded alongside."""

    @property
    def subscription(self) -> PlanState | None: ...


def tier_of(user: HasPlan, now: datetime, settings: Settings) -> Tier:
    """Basic or Pro right now, from the subscription loaded with the user."""
    return tier_for(user.subscription, now, settings.past_due_grace_days)
