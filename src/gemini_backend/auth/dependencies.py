"""Typed dependencies: the signed-in user and the auth service of a request."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import structlog
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from gemini_backend.auth import repository as repo
from gemini_backend.auth.service import AuthDeps, AuthService
from gemini_backend.core.db import DbSession
from gemini_backend.core.errors import Unauthorized
from gemini_backend.core.security import InvalidToken
from gemini_backend.users.models import User

_bearer = HTTPBearer(auto_error=False, description="The access token from a token response.")


@dataclass(frozen=True, slots=True)
class Principal:
    user: User
    session_id: int


async def _principal(
    request: Request,
    session: DbSession,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("Send 'Authorization: Bearer <access_token>'.")
    deps: AuthDeps = request.app.state.auth
    claims = deps.tokens.decode_access_token(credentials.credentials, deps.clock.now())
    user = await repo.user_with_live_session(session, claims.user_id, claims.session_id)
    if user is None:
        raise InvalidToken()
    structlog.contextvars.bind_contextvars(user_id=user.id)
    return Principal(user=user, session_id=claims.session_id)


async def _current_user(principal: Annotated[Principal, Depends(_principal)]) -> User:
    return principal.user


def _auth_service(request: Request, session: DbSession) -> AuthService:
    return AuthService(session, request.app.state.auth)


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


CurrentPrincipal = Annotated[Principal, Depends(_principal)]
CurrentUser = Annotated[User, Depends(_current_user)]
AuthServiceDep = Annotated[AuthService, Depends(_auth_service)]
ClientIp = Annotated[str, Depends(client_ip)]
