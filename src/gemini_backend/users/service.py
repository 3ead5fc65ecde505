"""Rules about users that other domains ask for (the tier rule itself: users/tier.py)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from gemini_backend.config import Settings
from gemini_backend.users.models import User
from gemini_backend.users.schemas import UserOut
from gemini_backend.users.tier import tier_of

if TYPE_CHECKING:
    from gemini_backend.auth.principals import SignedInUser


def user_out(user: User | SignedInUser, now: datetime, settings: Settings) -> UserOut:
    return UserOut.from_user(user, tier_of(user, now, settings))
