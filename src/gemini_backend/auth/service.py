"""The rules of authentication. Services never commit: the request owns the transaction."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from gemini_backend.auth import repository as repo
from gemini_backend.auth.passwords import check_password_policy
from gemini_backend.auth.phone import normalize_mobile_number
from gemini_backend.auth.principals import Principals
from gemini_backend.auth.schemas import OtpSentOut, TokenOut
from gemini_backend.config import Settings
from gemini_backend.core.clock import Clock
from gemini_backend.core.db import after_commit, release_connection
from gemini_backend.core.errors import (
    AppError,
    Conflict,
    TooManyRequests,
    Unauthorized,
    ValidationFailed,
)
from gemini_backend.core.security import (
    PasswordHasher,
    TokenCodec,
    digest_token,
    new_otp,
    new_refresh_token,
    otp_digest,
)
from gemini_backend.core.throttle import Throttle
from gemini_backend.users.models import User
from gemini_backend.users.service import user_out

log = structlog.get_logger(__name__)

LOGIN = "login"
RESET = "reset"


class UserExists(Conflict):
    code = "user_exists"
    detail = "An account with this mobile number already exists."


class InvalidCredentials(Unauthorized):
    code = "invalid_credentials"
    detail = "The mobile number, code or password is not correct."
    keeps_changes = True  # the failed attempt is counted


class InvalidRefreshToken(Unauthorized):
    code = "invalid_refresh_token"
    detail = "The refresh token is invalid, expired or already used."
    keeps_changes = True  # a reused token revokes its session


class CurrentPasswordRequired(ValidationFailed):
    code = "current_password_required"
    detail = "current_password is required to change an existing password."


class OtpResendTooSoon(TooManyRequests):
    code = "otp_resend_too_soon"


class LoginLocked(TooManyRequests):
    code = "too_many_attempts"


@dataclass(frozen=True, slots=True)
class AuthDeps:
    """What the auth service needs besides the request's database session."""

    settings: Settings
    clock: Clock
    hasher: PasswordHasher
    tokens: TokenCodec
    throttle: Throttle
    test_numbers: Mapping[str, str]
    principals: Principals


class AuthService:
    def __init__(self, session: AsyncSession, deps: AuthDeps) -> None:
        self.session = session
        self.deps = deps
        self.settings = deps.settings

    # --- helpers ----------------------------------------------------------------------------
    def number(self, raw: str) -> str:
        return normalize_mobile_number(
            raw, self.settings.default_phone_region, also_accept=self.deps.test_numbers.keys()
        )

    def _now(self) -> datetime:
        return self.deps.clock.now()

    def _changed(self, user_id: int | None) -> None:
        """This user's sessions or account changed: drop what API processes cached about them
        once the transaction commits (see auth.principals)."""
        if user_id is not None:
            principals: Principals = self.deps.principals
            after_commit(self.session, lambda: principals.invalidate(user_id))

    async def _issue_tokens(self, user: User, *, is_new_user: bool = False) -> TokenOut:
        now = self._now()
        session_id = await repo.create_session(self.session, user.id, now)
        refresh = new_refresh_token()
        await repo.add_refresh_token(
            self.session,
            session_id,
            digest_token(refresh),
            now,
            timedelta(seconds=self.settings.refresh_token_ttl_seconds),
        )
        return self._token_out(user, session_id, refresh, is_new_user=is_new_user)

    def _token_out(
        self, user: User, session_id: int, refresh: str, *, is_new_user: bool = False
    ) -> TokenOut:
        access = self.deps.tokens.issue_access_token(user.id, session_id, self._now())
        return TokenOut(
            access_token=access,
            token=access,
            expires_in=self.deps.tokens.ttl_seconds,
            refresh_token=refresh,
            is_new_user=is_new_user,
            user=user_out(user, self.deps.clock.now(), self.deps.settings),
        )

    async def _ensure_not_locked(self, number: str) -> None:
        now = self._now()
        until = await repo.locked_until(self.session, number, now)
        if until is not None:
            raise LoginLocked(
                (until - now).total_seconds(),
                "Too many failed attempts on this number; try again later.",
            )

    async def _fail(self, number: str, error: AppError | None = None) -> AppError:
        """Count a failed sign-in attempt and return the error to raise (its changes persist)."""
        await repo.record_failure(
            self.session,
            mobile_number=number,
            now=self._now(),
            threshold=self.settings.otp_lockout_threshold,
            lockout=timedelta(seconds=self.settings.otp_lockout_seconds),
        )
        log.info("auth_failure", mobile_number_suffix=number[-4:])
        return error or InvalidCredentials()

    async def _throttle_send(self, number: str, client_ip: str) -> None:
        limits = self.settings
        await self.deps.throttle.hit(
            f"{limits.otp_sends_per_ip_per_hour}/hour",
            "otp-send-ip",
            client_ip,
            detail="Too many codes requested from this address; try again later.",
        )
        await self.deps.throttle.hit(
            f"{limits.otp_sends_per_number_per_hour}/hour",
            "otp-send-number",
            number,
            detail="Too many codes requested for this number; try again later.",
        )

    async def _issue_otp(self, number: str, purpose: str, *, reveal: bool) -> str | None:
        """Store a fresh code for (number, purpose); returns it when it may be shown."""
        now = self._now()
        code = self.deps.test_numbers.get(number) or new_otp()
        stored = await repo.store_otp(
            self.session,
            mobile_number=number,
            purpose=purpose,
            code_digest=otp_digest(self.settings.otp_secret_value(), number, purpose, code),
            now=now,
            ttl=timedelta(seconds=self.settings.otp_ttl_seconds),
            resend_after=timedelta(seconds=self.settings.otp_resend_seconds),
        )
        if not stored:
            created = await repo.otp_created_at(self.session, number, purpose)
            wait = self.settings.otp_resend_seconds
            if created is not None:
                wait = int((created + timedelta(seconds=wait) - now).total_seconds())
            raise OtpResendTooSoon(wait, "A code was sent moments ago; wait before asking again.")
        if reveal and self.settings.otp_delivery == "response":
            return code
        return None

    async def _use_otp(self, number: str, purpose: str, code: str) -> None:
        """Consume the code or count the failure and raise 401."""
        await self._ensure_not_locked(number)
        now = self._now()
        digest = otp_digest(self.settings.otp_secret_value(), number, purpose, code)
        if await repo.consume_otp(
            self.session,
            mobile_number=number,
            purpose=purpose,
            code_digest=digest,
            now=now,
            max_attempts=self.settings.otp_max_attempts,
        ):
            await repo.clear_failures(self.session, number)
            return
        await repo.count_wrong_otp(self.session, mobile_number=number, purpose=purpose, now=now)
        raise await self._fail(number)

    # --- flows --------------------------------------------------------------------------------
    async def signup(
        self, raw_number: str, name: str | None, email: str | None, password: str | None
    ) -> User:
        number = self.number(raw_number)
        password_hash = None
        if password is not None:
            check_password_policy(password)
            password_hash = await self.deps.hasher.hash(password)
        user_id = await repo.insert_user(
            self.session,
            mobile_number=number,
            now=self._now(),
            name=name,
            email=str(email) if email else None,
            password_hash=password_hash,
        )
        if user_id is None:
            raise UserExists()
        user = await repo.user_by_number(self.session, number)
        assert user is not None
        return user

    async def send_login_otp(self, raw_number: str, client_ip: str) -> OtpSentOut:
        number = self.number(raw_number)
        await self._throttle_send(number, client_ip)
        await self._ensure_not_locked(number)
        code = await self._issue_otp(number, LOGIN, reveal=True)
        return OtpSentOut(message="OTP sent.", otp=code, expires_in=self.settings.otp_ttl_seconds)

    async def verify_login_otp(self, raw_number: str, code: str) -> TokenOut:
        number = self.number(raw_number)
        await self._use_otp(number, LOGIN, code)
        # Sign-in-or-up: a verified number with no account gets one now.
        now = self._now()
        created = await repo.insert_user(self.session, mobile_number=number, now=now) is not None
        user = await repo.user_by_number(self.session, number)
        assert user is not None
        if created:
            log.info("user_created", user_id=user.id, via="otp")
        return await self._issue_tokens(user, is_new_user=created)

    async def login_with_password(self, raw_number: str, password: str) -> TokenOut:
        number = self.number(raw_number)
        await self._ensure_not_locked(number)
        user = await repo.user_by_number(self.session, number)
        await release_connection(self.session)
        ok = await self.deps.hasher.verify(password, user.password_hash if user else None)
        if not ok or user is None:
            raise await self._fail(number)
        await repo.clear_failures(self.session, number)
        return await self._issue_tokens(user)

    async def refresh(self, refresh_token: str) -> TokenOut:
        now = self._now()
        digest = digest_token(refresh_token)
        spent = await repo.spend_refresh_token(self.session, digest, now)
        if spent is None:
            record = await repo.refresh_token_record(self.session, digest)
            if record is not None and record[1] is not None:
                # A spent token shown again: it was stolen or replayed. End that session.
                self._changed(await repo.revoke_session(self.session, record[0], now))
                log.warning("refresh_token_reuse", session_id=record[0])
            raise InvalidRefreshToken()
        session_id, user_id = spent
        new_token = new_refresh_token()
        await repo.add_refresh_token(
            self.session,
            session_id,
            digest_token(new_token),
            now,
            timedelta(seconds=self.settings.refresh_token_ttl_seconds),
        )
        user = await repo.user_with_live_session(self.session, user_id, session_id)
        if user is None:
            raise InvalidRefreshToken()
        return self._token_out(user, session_id, new_token)

    async def logout(self, user_id: int, session_id: int, refresh_token: str | None) -> None:
        now = self._now()
        self._changed(await repo.revoke_session(self.session, session_id, now))
        if refresh_token:
            record = await repo.refresh_token_record(self.session, digest_token(refresh_token))
            if record is not None and await repo.session_owner(self.session, record[0]) == user_id:
                self._changed(await repo.revoke_session(self.session, record[0], now))

    async def forgot_password(self, raw_number: str, client_ip: str) -> OtpSentOut:
        number = self.number(raw_number)
        await self._throttle_send(number, client_ip)
        await self._ensure_not_locked(number)
        user = await repo.user_by_number(self.session, number)
        # An unknown number goes through the same steps (a code is stored, so the resend
        # cooldown applies alike) but nothing is revealed and no account can be reset with it.
        code = await self._issue_otp(number, RESET, reveal=user is not None)
        return OtpSentOut(
            message="If an account exists for this number, a reset code has been sent.",
            otp=code,
            expires_in=self.settings.otp_ttl_seconds,
        )

    async def reset_password(self, raw_number: str, code: str, new_password: str) -> TokenOut:
        number = self.number(raw_number)
        check_password_policy(new_password)
        new_hash = await self.deps.hasher.hash(new_password)
        await self._use_otp(number, RESET, code)
        user = await repo.user_by_number(self.session, number)
        if user is None:
            raise await self._fail(number)
        now = self._now()
        await repo.set_password_hash(self.session, user.id, new_hash, now)
        await repo.revoke_all_sessions(self.session, user.id, now)
        self._changed(user.id)
        user.password_hash = new_hash
        log.info("password_reset", user_id=user.id)
        return await self._issue_tokens(user)

    async def change_password(
        self, user: User, current_password: str | None, new_password: str
    ) -> TokenOut:
        check_password_policy(new_password)
        if user.password_hash is not None:
            if not current_password:
                raise CurrentPasswordRequired()
            # A stolen access token must not allow unlimited guesses of the password.
            await self._ensure_not_locked(user.mobile_number)
        await release_connection(self.session)
        if user.password_hash is not None:
            assert current_password is not None
            if not await self.deps.hasher.verify(current_password, user.password_hash):
                raise await self._fail(user.mobile_number)
        new_hash = await self.deps.hasher.hash(new_password)
        now = self._now()
        await repo.set_password_hash(self.session, user.id, new_hash, now)
        await repo.revoke_all_sessions(self.session, user.id, now)
        self._changed(user.id)
        user.password_hash = new_hash
        log.info("password_changed", user_id=user.id)
        return await self._issue_tokens(user)
