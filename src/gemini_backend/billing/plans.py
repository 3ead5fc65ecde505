"""The tier follows from the subscription Stripe reports: `active` and `trialing` are Pro, and
`past_due` stays Pro for PAST_DUE_GRACE_DAYS after the paid period ends (Stripe is retrying the
card). Every other status (canceled, unpaid, incomplete, ...) and no subscription are Basic."""

from __future__ import annotations

from datetime import datetime, timedelta

from gemini_backend.billing.models import Subscription
from gemini_backend.users.schemas import Tier

PRO_STATUSES = frozenset({"active", "trialing"})


def tier_for(subscription: Subscription | None, now: datetime, grace_days: int) -> Tier:
    if subscription is None:
        return "basic"
    if subscription.status in PRO_STATUSES:
        return "pro"
    if subscription.status == "past_due":
        end = subscription.current_period_end
        if end is None or now < end + timedelta(days=grace_days):
            return "pro"
    return "basic"
