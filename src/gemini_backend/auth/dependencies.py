"""Typed dependencies: the signed-in user and the auth service of a request."""

from __future__ import annotations

import ipaddress
from typing import Annotated

import structlog
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from gemini_backend.auth.principals import Principals, SignedInUser
from gemini_backend.auth.service import AuthDeps, AuthService
from gemini_backend.core.db import DbSession
from gemini_backend.core.errors import Unauthorized
from gemini_backend.core.security import InvalidToken
from gemini_backend.services import services_of
from gemini_backend.users.models import User

_bearer = HTTPBearer(auto_error=False, description="The access token from a token response.")


async def _signed_in(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> SignedInUser:
    """The user behind the access token, if its session is live (from the process's principal
    cache, else one read on a connection of its own, returned before the route runs)."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("Send 'Authorization: Bearer <access_token>'.")
    state = services_of(request)
    deps: AuthDeps = state.auth
    claims = deps.tokens.decode_access_token(credentials.credentials, deps.clock.now())
    principals: Principals = state.principals
    user = await principals.get(claims.user_id, claims.session_id)
    if user is None:
        raise InvalidToken()
    structlog.contextvars.bind_contextvars(user_id=user.id)
    return user


async def _user_record(
    signed_in: Annotated[SignedInUser, Depends(_signed_in)], session: DbSession
) -> User:
    """The user's row in the request's session, for the few routes that change it or need
    more than the principal (password, Stripe customer)."""
    user = await session.get(User, signed_in.id)  # the subscription is joined (models.py)
    if user is None:
        raise InvalidToken()
    return user


async def _auth_service(request: Request, session: DbSession) -> AuthService:
    return AuthService(session, services_of(request).auth)


async def client_ip(request: Request) -> str:
    """The client as the per-client limits count it: its address, or for IPv6 its /64 (what one
    subscriber or host is given), so rotating through a prefix buys no extra attempts."""
    host = request.client.host if request.client else "unknown"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


CurrentUser = Annotated[SignedInUser, Depends(_signed_in)]
CurrentUserRecord = Annotated[User, Depends(_user_record)]
AuthServiceDep = Annotated[AuthService, Depends(_auth_service)]
ClientIp = Annotated[str, Depends(client_ip)]
