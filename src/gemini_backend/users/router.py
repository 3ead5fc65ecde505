from __future__ import annotations

from fastapi import APIRouter

from gemini_backend.auth.dependencies import CurrentUser
from gemini_backend.core.openapi import AUTH_ERRORS
from gemini_backend.users.schemas import UserOut
from gemini_backend.users.service import user_out

router = APIRouter(prefix="/user", tags=["User"])


@router.get("/me", summary="The signed-in user", responses=AUTH_ERRORS)
async def read_me(user: CurrentUser) -> UserOut:
    return user_out(user)
