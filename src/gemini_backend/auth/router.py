"""Thin HTTP layer of authentication; the rules live in `service.py`."""

from __future__ import annotations

from fastapi import APIRouter, Body, Response, status

from gemini_backend.auth.dependencies import AuthServiceDep, ClientIp, CurrentPrincipal, CurrentUser
from gemini_backend.auth.schemas import (
    ChangePasswordIn,
    LoginIn,
    LogoutIn,
    MobileNumberIn,
    OtpSentOut,
    RefreshIn,
    ResetPasswordIn,
    SignupIn,
    TokenOut,
    VerifyOtpIn,
)
from gemini_backend.core.openapi import AUTH_ERRORS, BODY_ERRORS, RATE_LIMIT_ERRORS, error_doc
from gemini_backend.users.schemas import UserOut
from gemini_backend.users.service import user_out

router = APIRouter(prefix="/auth", tags=["Auth"], responses=BODY_ERRORS)

CREDENTIAL_ERRORS = {401: error_doc("Wrong code or password"), **RATE_LIMIT_ERRORS}


@router.post(
    "/signup",
    status_code=status.HTTP_201_CREATED,
    summary="Register a mobile number (optionally with name, email, password)",
    responses={409: error_doc("The number is already registered")},
)
async def signup(body: SignupIn, auth: AuthServiceDep) -> UserOut:
    user = await auth.signup(body.mobile_number, body.name, body.email, body.password)
    return user_out(user)


@router.post(
    "/send-otp",
    summary="Send a sign-in code (sign-in-or-up)",
    responses=RATE_LIMIT_ERRORS,
    response_model_exclude_none=True,
)
async def send_otp(body: MobileNumberIn, auth: AuthServiceDep, ip: ClientIp) -> OtpSentOut:
    return await auth.send_login_otp(body.mobile_number, ip)


@router.post(
    "/verify-otp",
    summary="Exchange a sign-in code for tokens (creates the account if new)",
    responses=CREDENTIAL_ERRORS,
)
async def verify_otp(body: VerifyOtpIn, auth: AuthServiceDep) -> TokenOut:
    return await auth.verify_login_otp(body.mobile_number, body.otp)


@router.post("/login", summary="Sign in with a password", responses=CREDENTIAL_ERRORS)
async def login(body: LoginIn, auth: AuthServiceDep) -> TokenOut:
    return await auth.login_with_password(body.mobile_number, body.password)


@router.post(
    "/refresh",
    summary="Rotate a refresh token (the old one is spent)",
    responses={401: error_doc("Invalid, expired or reused refresh token")},
)
async def refresh(body: RefreshIn, auth: AuthServiceDep) -> TokenOut:
    return await auth.refresh(body.refresh_token)


@router.post(
    "/logout",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="End this session (its access and refresh tokens)",
    responses=AUTH_ERRORS,
)
async def logout(
    principal: CurrentPrincipal,
    auth: AuthServiceDep,
    body: LogoutIn | None = Body(default=None),
) -> Response:
    await auth.logout(principal.user, principal.session_id, body.refresh_token if body else None)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/forgot-password",
    summary="Send a password-reset code (same answer for unknown numbers)",
    responses=RATE_LIMIT_ERRORS,
    response_model_exclude_none=True,
)
async def forgot_password(body: MobileNumberIn, auth: AuthServiceDep, ip: ClientIp) -> OtpSentOut:
    return await auth.forgot_password(body.mobile_number, ip)


@router.post(
    "/reset-password",
    summary="Set a new password with a reset code (ends every other session)",
    responses=CREDENTIAL_ERRORS,
)
async def reset_password(body: ResetPasswordIn, auth: AuthServiceDep) -> TokenOut:
    return await auth.reset_password(body.mobile_number, body.otp, body.new_password)


@router.post(
    "/change-password",
    summary="Change the password (ends every other session)",
    responses={**AUTH_ERRORS},
)
async def change_password(
    body: ChangePasswordIn, user: CurrentUser, auth: AuthServiceDep
) -> TokenOut:
    return await auth.change_password(user, body.current_password, body.new_password)
