from __future__ import annotations

from fastapi import APIRouter, Request

from gemini_backend.auth.dependencies import CurrentUser
from gemini_backend.core.openapi import AUTH_ERRORS
from gemini_backend.services import services_of
from gemini_backend.users.schemas import UserOut
from gemini_backend.users.service import user_out

router = APIRouter(prefix="/user", tags=["User"])


@router.get(
    "/me",
    summary="The signed-in user",
    description=(
        "`tier` is the plan in effect now: pro while the subscription is active or trialing "
        "(or past due, within PAST_DUE_GRACE_DAYS of the period end)."
    ),
    responses=AUTH_ERRORS,
)
async def read_me(request: Request, user: CurrentUser) -> UserOut:
    return user_out(user, services_of(request).clock.now(), services_of(request).settings)
