"""Thin HTTP layer of authentication; the rules live in `service.py`."""

from __future__ import annotations

from fastapi import APIRouter, Body, Response, status

from gemini_backend.auth.delivery import OtpDeliveryFailed
from gemini_backend.auth.dependencies import (
    AuthServiceDep,
    ClientIp,
    CurrentUser,
    CurrentUserRecord,
)
from gemini_backend.auth.passwords import CommonPassword
from gemini_backend.auth.phone import InvalidMobileNumber
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
from gemini_backend.auth.service import (
    LOCKED_DETAIL,
    PER_ADDRESS_ATTEMPTS_DETAIL,
    CurrentPasswordRequired,
    InvalidCredentials,
    InvalidRefreshToken,
    LoginLocked,
    OtpRequired,
    OtpResendTooSoon,
    UserExists,
    VerificationRequired,
)
from gemini_backend.core.errors import TooManyRequests, Unauthorized
from gemini_backend.core.openapi import (
    AUTH_ERRORS,
    BODY_ERRORS,
    RETRY_AFTER,
    Responses,
    error_doc_for,
    problem,
    validation_doc,
)
from gemini_backend.core.security import ExpiredToken, HashingBusy, InvalidToken
from gemini_backend.users.schemas import UserOut
from gemini_backend.users.service import user_out

router = APIRouter(prefix="/auth", tags=["Auth"], responses=BODY_ERRORS)

WRONG_CREDENTIALS = error_doc_for(
    ("Wrong code or password", InvalidCredentials), note="the same for an unknown number"
)
LOCKED_OUT = error_doc_for(
    ("Too many failed attempts on this number", LoginLocked),
    detail=LOCKED_DETAIL,
    note="see Retry-After",
    headers=RETRY_AFTER,
)
BUSY = error_doc_for(
    ("Too many password hashes waiting", HashingBusy), note="see Retry-After", headers=RETRY_AFTER
)
CREDENTIAL_ERRORS: Responses = {**WRONG_CREDENTIALS, **LOCKED_OUT, **BUSY}
OTP_SEND_ERRORS: Responses = {
    422: validation_doc(InvalidMobileNumber),
    **error_doc_for(
        ("Too many codes for this number or address", TooManyRequests),
        ("a code sent moments ago", OtpResendTooSoon),
        ("a number locked after failed attempts", LoginLocked),
        example=OtpResendTooSoon,
        note="see Retry-After",
        headers=RETRY_AFTER,
    ),
    **error_doc_for(
        ("The SMS provider could not deliver the code", OtpDeliveryFailed),
        note="it was withdrawn",
    ),
}
OTP_DESCRIPTION = (
    "A 6-digit code, valid 5 minutes (OTP_TTL_SECONDS), single use; a new code replaces the "
    "previous one and 5 wrong tries burn it. `otp` is in the body only while OTP delivery is "
    "`response` (no SMS provider); `expires_in` is in seconds. Sends are throttled per number "
    "and per client address, and a second code within OTP_RESEND_SECONDS (30) is refused: "
    "429 with `Retry-After`."
)


@router.post(
    "/signup",
    status_code=status.HTTP_201_CREATED,
    summary="Register a mobile number (optionally with name, email, password)",
    description=(
        "Registers up front; signing in with an OTP also creates the account. The number is "
        "normalised to E.164 (without a country code it takes DEFAULT_PHONE_REGION). Aliases "
        "accepted: `mobile`, `phone`, `mobileNumber`; `full_name` for `name`. No tokens: sign "
        "in afterwards. A password given here is pending until the first `POST /auth/verify-otp` "
        "presents it (else it is dropped), so registering someone else's number opens nothing."
    ),
    responses={
        **error_doc_for(("The number is already registered", UserExists)),
        422: validation_doc(InvalidMobileNumber, CommonPassword),
        **error_doc_for(
            ("Too many requests from this address", TooManyRequests),
            detail=PER_ADDRESS_ATTEMPTS_DETAIL,
            note="see Retry-After",
            headers=RETRY_AFTER,
        ),
        **BUSY,
    },
)
async def signup(body: SignupIn, auth: AuthServiceDep, ip: ClientIp) -> UserOut:
    user = await auth.signup(body.mobile_number, body.name, body.email, body.password, ip)
    return user_out(user, auth.deps.clock.now(), auth.deps.settings)


@router.post(
    "/send-otp",
    summary="Send a sign-in code (sign-in-or-up)",
    description=(
        "Any valid number: verifying the code creates the account if new. " + OTP_DESCRIPTION
    ),
    responses=OTP_SEND_ERRORS,
    response_model_exclude_none=True,
)
async def send_otp(body: MobileNumberIn, auth: AuthServiceDep, ip: ClientIp) -> OtpSentOut:
    return await auth.send_login_otp(body.mobile_number, ip)


@router.post(
    "/verify-otp",
    summary="Exchange a sign-in code for tokens (creates the account if new)",
    description=(
        "`otp` (aliases `code`, `otp_code`) is the code from `POST /auth/send-otp`. `is_new_user` "
        "is true when this created the account. A wrong code is 401; repeated failures lock the "
        "number for this client address (10), or for everyone (50): 429 with `Retry-After`. "
        "The first verification of a number registered with a password activates that "
        "password if `password` presents it, and drops it otherwise."
    ),
    responses={**CREDENTIAL_ERRORS, 422: validation_doc(InvalidMobileNumber)},
)
async def verify_otp(body: VerifyOtpIn, auth: AuthServiceDep, ip: ClientIp) -> TokenOut:
    return await auth.verify_login_otp(body.mobile_number, body.otp, ip, body.password)


@router.post(
    "/login",
    summary="Sign in with a password",
    description=(
        "For accounts with a password. A password given at signup works only once the first "
        "`POST /auth/verify-otp` presented it (before that: 401 `verification_required`, "
        "answered only to whoever knows that password)."
    ),
    responses={
        **CREDENTIAL_ERRORS,
        **error_doc_for(
            ("Wrong password or unknown number", InvalidCredentials),
            ("a signup password not yet activated by an OTP verification", VerificationRequired),
        ),
        422: validation_doc(InvalidMobileNumber),
    },
)
async def login(body: LoginIn, auth: AuthServiceDep, ip: ClientIp) -> TokenOut:
    return await auth.login_with_password(body.mobile_number, body.password, ip)


@router.post(
    "/refresh",
    summary="Rotate a refresh token (the old one is spent)",
    description=(
        "Answers a new access token and a new refresh token. A refresh token works once: "
        "showing a spent one again is treated as theft and ends its session."
    ),
    responses={
        **error_doc_for(("Invalid, expired or reused refresh token", InvalidRefreshToken)),
        422: validation_doc(
            example=problem("missing", ("body", "refresh_token"), "Field required")
        ),
    },
)
async def refresh(body: RefreshIn, auth: AuthServiceDep) -> TokenOut:
    return await auth.refresh(body.refresh_token)


@router.post(
    "/logout",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="End this session (its access and refresh tokens)",
    description=(
        "Revokes the session of the access token. The body is optional; a `refresh_token` of "
        "another of the caller's sessions ends that one too."
    ),
    responses={
        **AUTH_ERRORS,
        422: validation_doc(
            example=problem(
                "string_too_short",
                ("body", "refresh_token"),
                "String should have at least 1 character",
                min_length="1",
            )
        ),
    },
)
async def logout(
    user: CurrentUser,
    auth: AuthServiceDep,
    body: LogoutIn | None = Body(default=None),
) -> Response:
    await auth.logout(user.id, user.session_id, body.refresh_token if body else None)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/forgot-password",
    summary="Send a password-reset code (same answer for unknown numbers)",
    description=(
        "Answers the same for a number with no account, but then no code is issued that could "
        "reset anything and none is shown. Reset codes are separate from sign-in codes. "
        + OTP_DESCRIPTION
    ),
    responses=OTP_SEND_ERRORS,
    response_model_exclude_none=True,
)
async def forgot_password(body: MobileNumberIn, auth: AuthServiceDep, ip: ClientIp) -> OtpSentOut:
    return await auth.forgot_password(body.mobile_number, ip)


@router.post(
    "/reset-password",
    summary="Set a new password with a reset code (ends every other session)",
    description=(
        "`otp` is the code from `POST /auth/forgot-password`. Every earlier access and refresh "
        "token of the user is revoked; the answer holds new tokens."
    ),
    responses={
        **CREDENTIAL_ERRORS,
        422: validation_doc(InvalidMobileNumber, CommonPassword),
    },
)
async def reset_password(body: ResetPasswordIn, auth: AuthServiceDep, ip: ClientIp) -> TokenOut:
    return await auth.reset_password(body.mobile_number, body.otp, body.new_password, ip)


@router.post(
    "/change-password",
    summary="Change the password (ends every other session)",
    description=(
        "`current_password` is required when the account has a password; without one, a fresh "
        "sign-in code (`POST /auth/send-otp`) as `otp` sets the first password. The calling "
        "session stays signed in (its tokens keep working; the answer also holds a fresh "
        "pair); every other session of the user ends. A wrong current password or code counts "
        "as a failed sign-in attempt."
    ),
    responses={
        **error_doc_for(
            (
                "Missing, invalid, expired or revoked access token",
                Unauthorized,
                InvalidToken,
                ExpiredToken,
            ),
            ("a wrong current password", InvalidCredentials),
            example=InvalidCredentials,
            headers=AUTH_ERRORS[401]["headers"],
        ),
        422: validation_doc(
            CurrentPasswordRequired,
            OtpRequired,
            CommonPassword,
            example=problem(
                "string_too_short",
                ("body", "new_password"),
                "String should have at least 8 characters",
                min_length="8",
            ),
        ),
        **LOCKED_OUT,
        **BUSY,
    },
)
async def change_password(
    body: ChangePasswordIn,
    principal: CurrentUser,
    user: CurrentUserRecord,
    auth: AuthServiceDep,
    ip: ClientIp,
) -> TokenOut:
    return await auth.change_password(
        user,
        principal.session_id,
        ip,
        current_password=body.current_password,
        otp=body.otp,
        new_password=body.new_password,
    )
