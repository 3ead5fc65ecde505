"""Rules about users that other domains ask for."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from gemini_backend.billing.plans import tier_for
from gemini_backend.config import Settings
from gemini_backend.users.models import User
from gemini_backend.users.schemas import Tier, UserOut

if TYPE_CHECKING:
    from gemini_backend.auth.principals import SignedInUser


def tier_of(user: User | SignedInUser, now: datetime, settings: Settings) -> Tier:
    """Basic or Pro right now, from the subscription loaded with the user."""
    return tier_for(user.subscription, now, settings.past_due_grace_days)


def user_out(user: User | SignedInUser, now: datetime, settings: Settings) -> UserOut:
    return UserOut.from_user(user, tier_of(user, now, settings))
