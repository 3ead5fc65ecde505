from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from gemini_backend.users.models import User
from gemini_backend.users.tier import Tier

if TYPE_CHECKING:
    from gemini_backend.auth.principals import SignedInUser

USER_EXAMPLE: dict[str, Any] = {
    "id": 1,
    "mobile_number": "+919876543210",
    "name": "Asha",
    "email": "asha@example.com",
    "tier": "basic",
    "has_password": True,
    "created_at": "2026-11-22T10:00:00Z",
}


class UserOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": USER_EXAMPLE})

    id: int
    mobile_number: str = Field(description="E.164")
    name: str | None
    email: str | None
    tier: Tier
    has_password: bool
    created_at: datetime

    @classmethod
    def from_user(cls, user: User | SignedInUser, tier: Tier) -> UserOut:
        has_password = (
            user.password_hash is not None if isinstance(user, User) else user.has_password
        )
        return cls(
            id=user.id,
            mobile_number=user.mobile_number,
            name=user.name,
            email=user.email,
            tier=tier,
            has_password=has_password,
            created_at=user.created_at,
        )


TOKEN_BUDGET_EXAMPLE: dict[str, Any] = {
    "limit": 200000,
    "used": 51234,
    "reserved": 2000,
    "remaining": 146766,
    "resets_at": "2026-12-01T00:00:00Z",
}


class TokenBudgetOut(BaseModel):
    """The month's token budget (GET /user/usage and GET /subscription/status)."""

    model_config = ConfigDict(json_schema_extra={"example": TOKEN_BUDGET_EXAMPLE})

    limit: int | None = Field(description="MONTHLY_TOKEN_BUDGET_* of the plan; null = unlimited")
    used: int = Field(description="Prompt + output + thinking tokens of the replies ended")
    reserved: int = Field(description="Held by the replies still in flight")
    remaining: int | None = Field(description="limit - used - reserved; null = unlimited")
    resets_at: datetime = Field(description="00:00 UTC of the next month's 1st")

    @classmethod
    def of(cls, budget: Any) -> TokenBudgetOut | None:
        """From the quota's TokenBudget (None: no budget configured)."""
        if budget is None:
            return None
        return cls(
            limit=budget.limit,
            used=budget.used,
            reserved=budget.reserved,
            remaining=budget.remaining,
            resets_at=budget.resets_at,
        )
