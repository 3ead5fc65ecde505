"""`GET /chatroom/usage` and `GET /user/usage`: today's quota of the caller."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from gemini_backend.auth.dependencies import CurrentUser
from gemini_backend.core.db import DbSession
from gemini_backend.core.openapi import AUTH_ERRORS
from gemini_backend.services import services_of
from gemini_backend.users.tier import Tier, tier_of

router = APIRouter(tags=["Subscriptions"], responses=AUTH_ERRORS)


class UsageOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "tier": "basic",
                "daily_limit": 5,
                "used_today": 2,
                "remaining_today": 3,
                "resets_at": "2026-11-23T00:00:00Z",
            }
        }
    )

    tier: Tier
    daily_limit: int | None = Field(description="null = unlimited")
    used_today: int
    remaining_today: int | None = Field(description="null = unlimited")
    resets_at: datetime = Field(description="The next local midnight in QUOTA_TIMEZONE")


async def _usage(request: Request, user: CurrentUser, session: DbSession) -> UsageOut:
    state = services_of(request)
    now = state.clock.now()
    tier = tier_of(user, now, state.settings)
    quota = await state.quota.state(session, user.id, tier, now)
    return UsageOut(
        tier=tier,
        daily_limit=quota.limit,
        used_today=quota.used,
        remaining_today=quota.remaining,
        resets_at=quota.resets_at,
    )


USAGE_DESCRIPTION = (
    "Messages sent today against the plan's daily limit (Basic: BASIC_DAILY_LIMIT, 5 by "
    "default; Pro: unlimited, shown as null). The day is the calendar day in QUOTA_TIMEZONE; "
    "`resets_at` is its next midnight. A failed or blocked reply gives its slot back."
)


@router.get("/chatroom/usage", summary="Today's message quota", description=USAGE_DESCRIPTION)
async def chatroom_usage(request: Request, user: CurrentUser, session: DbSession) -> UsageOut:
    return await _usage(request, user, session)


@router.get(
    "/user/usage",
    summary="Today's message quota (same as /chatroom/usage)",
    description=USAGE_DESCRIPTION,
)
async def user_usage(request: Request, user: CurrentUser, session: DbSession) -> UsageOut:
    return await _usage(request, user, session)
