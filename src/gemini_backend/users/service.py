"""Rules about users that other domains ask for."""

from __future__ import annotations

from gemini_backend.users.models import User
from gemini_backend.users.schemas import Tier, UserOut


def tier_of(user: User) -> Tier:
    # Subscriptions are not built yet: every account is on the Basic tier until billing derives
    # the tier from the subscription status.
    return "basic"


def user_out(user: User) -> UserOut:
    return UserOut.from_user(user, tier_of(user))
