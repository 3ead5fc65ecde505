"""`GET /chatroom/usage` and `GET /user/usage`: today's quota of the caller."""

from __future__ import annotations

import datetime as dt
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from gemini_backend.auth.dependencies import CurrentUser
from gemini_backend.core.db import DbSession
from gemini_backend.core.openapi import (
    AUTH_ERRORS,
    RATE_LIMIT_HEADERS,
    TOKEN_BUDGET_HEADERS,
    problem,
    validation_doc,
)
from gemini_backend.services import services_of
from gemini_backend.users.schemas import TOKEN_BUDGET_EXAMPLE, TokenBudgetOut
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
                "monthly_tokens": TOKEN_BUDGET_EXAMPLE,
            }
        }
    )

    tier: Tier
    daily_limit: int | None = Field(description="null = unlimited")
    used_today: int
    remaining_today: int | None = Field(description="null = unlimited")
    resets_at: datetime = Field(description="The next local midnight in QUOTA_TIMEZONE")
    monthly_tokens: TokenBudgetOut | None = Field(
        description="The month's token budget; null when no MONTHLY_TOKEN_BUDGET_* is set"
    )


async def _usage(
    request: Request, user: CurrentUser, session: DbSession, response: Response
) -> UsageOut:
    state = services_of(request)
    now = state.clock.now()
    tier = tier_of(user, now, state.settings)
    quota = await state.quota.state(session, user.id, tier, now)
    response.headers.update(quota.headers(now))
    return UsageOut(
        tier=tier,
        daily_limit=quota.limit,
        used_today=quota.used,
        remaining_today=quota.remaining,
        resets_at=quota.resets_at,
        monthly_tokens=TokenBudgetOut.of(quota.tokens),
    )


USAGE_DESCRIPTION = (
    "Messages sent today against the plan's daily limit (Basic: BASIC_DAILY_LIMIT, 5 by "
    "default; Pro: unlimited, shown as null). The day is the calendar day in QUOTA_TIMEZONE; "
    "`resets_at` is its next midnight. A failed or blocked reply gives its slot back. "
    "`monthly_tokens`: the calendar month's (UTC) token budget when one is configured "
    "(MONTHLY_TOKEN_BUDGET_BASIC / _PRO), with the tokens of the replies ended and those "
    "reserved by replies in flight. The same figures come as X-RateLimit-* and "
    "X-TokenBudget-* headers."
)
USAGE_HEADERS: dict[int | str, dict[str, Any]] = {
    200: {"headers": {**RATE_LIMIT_HEADERS, **TOKEN_BUDGET_HEADERS}}
}


@router.get(
    "/chatroom/usage",
    summary="Today's message quota",
    description=USAGE_DESCRIPTION,
    responses=USAGE_HEADERS,
)
async def chatroom_usage(
    request: Request, user: CurrentUser, session: DbSession, response: Response
) -> UsageOut:
    return await _usage(request, user, session, response)


@router.get(
    "/user/usage",
    summary="Today's message quota and the month's tokens (same as /chatroom/usage)",
    description=USAGE_DESCRIPTION,
    responses=USAGE_HEADERS,
)
async def user_usage(
    request: Request, user: CurrentUser, session: DbSession, response: Response
) -> UsageOut:
    return await _usage(request, user, session, response)


DAY_EXAMPLE: dict[str, Any] = {
    "date": "2026-11-22",
    "messages": 3,
    "prompt_tokens": 412,
    "output_tokens": 960,
    "thinking_tokens": 1310,
    "cached_tokens": 128,
}


class DayUsageOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": DAY_EXAMPLE})

    date: dt.date = Field(description="A calendar day in QUOTA_TIMEZONE")
    messages: int = Field(description="Replies finished for messages sent that day")
    prompt_tokens: int
    output_tokens: int
    thinking_tokens: int
    cached_tokens: int = Field(description="Of the prompt tokens, those read from a cache")


class UsageHistoryOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "days": [
                    {
                        "date": "2026-11-21",
                        "messages": 0,
                        "prompt_tokens": 0,
                        "output_tokens": 0,
                        "thinking_tokens": 0,
                        "cached_tokens": 0,
                    },
                    DAY_EXAMPLE,
                ]
            }
        }
    )

    days: list[DayUsageOut] = Field(description="Oldest first, today last, every day present")


@router.get(
    "/user/usage/history",
    summary="Tokens used per day",
    description=(
        "The caller's replies and the tokens the provider reported for them (prompt, output, "
        "thinking, cached), summed per day for the last `days` days (today included). A day "
        "is the calendar day in QUOTA_TIMEZONE of the message a reply answers; tokens a "
        "provider did not report count as 0. Replies in deleted chatrooms are gone with them."
    ),
    responses={
        422: validation_doc(
            example=problem(
                "less_than_equal",
                ("query", "days"),
                "Input should be less than or equal to 366",
                le="366",
            )
        )
    },
)
async def usage_history(
    request: Request,
    user: CurrentUser,
    session: DbSession,
    days: Annotated[int, Query(ge=1, le=366, description="How many days, today included")] = 30,
) -> UsageHistoryOut:
    state = services_of(request)
    history = await state.quota.history(session, user.id, days, state.clock.now())
    return UsageHistoryOut(
        days=[
            DayUsageOut(
                date=day.date,
                messages=day.messages,
                prompt_tokens=day.prompt_tokens,
                output_tokens=day.output_tokens,
                thinking_tokens=day.thinking_tokens,
                cached_tokens=day.cached_tokens,
            )
            for day in history
        ]
    )
