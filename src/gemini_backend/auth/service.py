"""The rules of authentication. Services never commit: the request owns the transaction."""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from gemini_backend.auth import repository as repo
from gemini_backend.auth.delivery import OtpDeliveryFailed, OtpSender
from gemini_backend.auth.passwords import check_password_policy
from gemini_backend.auth.phone import normalize_mobile_number
from gemini_backend.auth.principals import Principals
from gemini_backend.auth.schemas import OtpSentOut, TokenOut
from gemini_backend.config import Settings
from gemini_backend.core.clock import Clock
from gemini_backend.core.db import after_commit, commit_now, release_connection
from gemini_backend.core.errors import (
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


class NoCodeToCheck(InvalidCredentials):
    """No live code to check a guess against: the same answer, and nothing is kept."""

    keeps_changes = False


class VerificationRequired(Unauthorized):
    code = "verification_required"
    detail = (
        "This password was set at signup and the number is not verified yet: verify a sign-in "
        "code with POST /auth/verify-otp, giving this password too, to activate it."
    )
    keeps_changes = True


class OtpRequired(ValidationFailed):
    code = "otp_required"
    detail = (
        "Setting a first password needs a fresh sign-in code: request one with "
        "POST /auth/send-otp and give it as `otp`."
    )


class ConfirmationRequired(ValidationFailed):
    code = "confirmation_required"
    detail = (
        "Confirm who you are: give `current_password`, or a fresh sign-in code from "
        "POST /auth/send-otp as `otp`."
    )


class OtpResendTooSoon(TooManyRequests):
    code = "otp_resend_too_soon"
    detail = "A code was sent moments ago; wait before asking again."


PER_NUMBER_DETAIL = "Too many codes requested for this number; try again later."
PER_ADDRESS_ATTEMPTS_DETAIL = "Too many sign-in requests from this address; try again later."
LOCKED_DETAIL = "Too many failed attempts on this number; try again later."


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
    otp_sender: OtpSender


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
        session_id = await repo.create_session(self.session, user.id, self._now())
        return await self._fresh_pair(user, session_id, is_new_user=is_new_user)

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

    # --- attempts and lockouts -------------------------------------------------------------
    def _guards(self, number: str, client_ip: str) -> list[tuple[str, int]]:
        """The subjects an attempt on `number` counts against, with their thresholds: the number
        from this client address, and the number from every address (a higher threshold, so
        that nobody can lock a number for everyone from one address)."""
        settings = self.settings
        return [
            (f"{number} {client_ip[:64]}", settings.otp_lockout_threshold),
            (number, settings.otp_number_lockout_threshold),
        ]

    async def _locked(self, subjects: list[str]) -> LoginLocked | None:
        now = self._now()
        until = await repo.locked_until(self.session, subjects, now)
        if until is None:
            return None
        return LoginLocked((until - now).total_seconds(), LOCKED_DETAIL)

    async def _refuse_if_locked(self, number: str, client_ip: str) -> None:
        """429 at once when a guard of this number and address is locked: the clear answer
        before any work; the reservation is what enforces the limit."""
        locked = await self._locked([subject for subject, _ in self._guards(number, client_ip)])
        if locked is not None:
            raise locked

    async def _reserve_attempt(self, number: str, client_ip: str) -> list[str]:
        """Count an attempt before its secret is checked, or raise 429 when it is locked.

        The caller commits it before checking anything: attempts that run concurrently then
        each see the others' counts, so no more than the threshold are ever checked. A success
        clears the count again.
        """
        now = self._now()
        lockout = timedelta(seconds=self.settings.otp_lockout_seconds)
        guards = self._guards(number, client_ip)
        for subject, threshold in guards:
            reserved = await repo.reserve_attempt(
                self.session, subject, now=now, threshold=threshold, lockout=lockout
            )
            if not reserved:
                # Nothing of this attempt is kept: the error rolls the reservations back.
                raise await self._locked([s for s, _ in guards]) or LoginLocked(1)
        log.info("auth_attempt", mobile_number_suffix=number[-4:])
        return [subject for subject, _ in guards]

    async def _throttle_attempt(self, client_ip: str) -> None:
        await self.deps.throttle.hit(
            f"{self.settings.auth_attempts_per_ip_per_minute}/minute",
            "auth-attempt-ip",
            client_ip,
            detail=PER_ADDRESS_ATTEMPTS_DETAIL,
        )

    async def _throttle_send(self, number: str, client_ip: str) -> None:
        """Codes asked from this address are counted at once; codes for the number only once one
        is really sent (a refused request never spends the number's budget)."""
        await self.deps.throttle.hit(
            f"{self.settings.otp_sends_per_ip_per_hour}/hour",
            "otp-send-ip",
            client_ip,
            detail="Too many codes requested from this address; try again later.",
        )
        await self._refuse_if_locked(number, client_ip)
        await self.deps.throttle.check(
            self._per_number_sends, "otp-send-number", number, detail=PER_NUMBER_DETAIL
        )

    @property
    def _per_number_sends(self) -> str:
        return f"{self.settings.otp_sends_per_number_per_hour}/hour"

    async def _issue_otp(self, number: str, purpose: str, *, deliver: bool) -> str | None:
        """Store a fresh code for (number, purpose) and deliver it; returns it when the code is
        shown in the response."""
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
            raise OtpResendTooSoon(wait)
        sender = self.deps.otp_sender
        if deliver and not sender.in_response:
            # Sent once the code is committed (no lock is held across the SMS provider's round
            # trip); a code that could not be sent is withdrawn, so asking again is not too soon.
            await commit_now(self.session)
            try:
                await sender.send(number, code, purpose, self.settings.otp_ttl_seconds)
            except OtpDeliveryFailed:
                await repo.delete_otp(self.session, number, purpose)
                raise
        # Counted once the code is out (the check before stopped a send over the budget).
        await self.deps.throttle.count(self._per_number_sends, "otp-send-number", number)
        return code if deliver and sender.in_response else None

    async def _use_otp(self, number: str, client_ip: str, purpose: str, code: str) -> None:
        """Consume the code, or raise 401 (the attempt stays counted) or 429 (locked)."""
        await self._refuse_if_locked(number, client_ip)
        now = self._now()
        # The code's row first, then the guards: the order every transaction here locks them.
        live = await repo.reserve_otp_attempt(
            self.session,
            mobile_number=number,
            purpose=purpose,
            now=now,
            max_attempts=self.settings.otp_max_attempts,
        )
        if live is None:
            # No live code: nothing is checked, so nothing is counted either.
            raise NoCodeToCheck()
        guards = await self._reserve_attempt(number, client_ip)
        await commit_now(self.session)
        otp_id, stored_digest = live
        digest = otp_digest(self.settings.otp_secret_value(), number, purpose, code)
        if hmac.compare_digest(digest, stored_digest) and await repo.consume_otp(
            self.session, otp_id, stored_digest
        ):
            await repo.clear_failures(self.session, guards)
            return
        log.info("auth_failure", mobile_number_suffix=number[-4:], via="otp")
        raise InvalidCredentials()

    async def _check_password(
        self, number: str, client_ip: str, password: str, password_hash: str | None
    ) -> list[str]:
        """Verify a password as a counted attempt; the guards to clear once it succeeds."""
        guards = await self._reserve_attempt(number, client_ip)
        await commit_now(self.session)
        if not await self.deps.hasher.verify(password, password_hash):
            log.info("auth_failure", mobile_number_suffix=number[-4:], via="password")
            raise InvalidCredentials()
        return guards

    # --- flows --------------------------------------------------------------------------------
    async def signup(
        self,
        raw_number: str,
        name: str | None,
        email: str | None,
        password: str | None,
        client_ip: str,
    ) -> User:
        """Register up front. A password given here is pending: nobody has proven the number
        yet, so it only takes effect when the first OTP verification presents it too."""
        number = self.number(raw_number)
        await self._throttle_attempt(client_ip)
        if password is not None:
            check_password_policy(password)
        # Checked before hashing: a taken number costs no CPU.
        if await repo.user_by_number(self.session, number) is not None:
            raise UserExists()
        pending = None
        if password is not None:
            await release_connection(self.session)
            pending = await self.deps.hasher.hash(password)
        user_id = await repo.insert_user(
            self.session,
            mobile_number=number,
            now=self._now(),
            name=name,
            email=str(email) if email else None,
            pending_password_hash=pending,
        )
        if user_id is None:
            raise UserExists()
        user = await repo.user_by_number(self.session, number)
        assert user is not None
        return user

    async def send_login_otp(self, raw_number: str, client_ip: str) -> OtpSentOut:
        number = self.number(raw_number)
        await self._throttle_send(number, client_ip)
        code = await self._issue_otp(number, LOGIN, deliver=True)
        return OtpSentOut(message="OTP sent.", otp=code, expires_in=self.settings.otp_ttl_seconds)

    async def verify_login_otp(
        self, raw_number: str, code: str, client_ip: str, password: str | None = None
    ) -> TokenOut:
        number = self.number(raw_number)
        await self._throttle_attempt(client_ip)
        await self._use_otp(number, client_ip, LOGIN, code)
        # Sign-in-or-up: a verified number with no account gets one now.
        now = self._now()
        created = await repo.insert_user(self.session, mobile_number=number, now=now) is not None
        user = await repo.user_by_number(self.session, number)
        assert user is not None
        if created:
            log.info("user_created", user_id=user.id, via="otp")
        if user.pending_password_hash is not None:
            await commit_now(self.session)
            await self._settle_pending_password(user, password)
        return await self._issue_tokens(user, is_new_user=created)

    async def _settle_pending_password(self, user: User, password: str | None) -> None:
        """The number is proven now. The signup's password takes effect if this verification
        presents it (whoever set it also holds the phone); any other verification drops it, so
        a password set by someone else on this number never opens the account."""
        pending = user.pending_password_hash
        assert pending is not None
        activate = password is not None and await self.deps.hasher.verify(password, pending)
        await repo.settle_pending_password(
            self.session, user.id, activate=activate, now=self._now()
        )
        if activate:
            user.password_hash = pending
        user.pending_password_hash = None
        log.info("pending_password_settled", user_id=user.id, activated=activate)

    async def login_with_password(self, raw_number: str, password: str, client_ip: str) -> TokenOut:
        number = self.number(raw_number)
        await self._throttle_attempt(client_ip)
        user = await repo.user_by_number(self.session, number)
        stored = user.password_hash if user else None
        pending = user.pending_password_hash if user and stored is None else None
        guards = await self._check_password(number, client_ip, password, stored or pending)
        assert user is not None
        if stored is None:
            raise VerificationRequired()
        await repo.clear_failures(self.session, guards)
        return await self._issue_tokens(user)

    async def refresh(self, refresh_token: str) -> TokenOut:
        now = self._now()
        digest = digest_token(refresh_token)
        spent = await repo.spend_refresh_token(self.session, digest, now)
        if spent is None:
            return await self._refresh_again(refresh_token, digest, now)
        session_id, user_id = spent
        new_token = self.deps.tokens.successor_refresh_token(refresh_token)
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

    async def _refresh_again(self, refresh_token: str, digest: str, now: datetime) -> TokenOut:
        """A token that is not live. Spent moments ago, with its successor still unused: the
        client's own parallel requests, answered with that successor. Spent earlier: stolen or
        replayed, and its session ends."""
        record = await repo.refresh_token_record(self.session, digest)
        if record is None:
            raise InvalidRefreshToken()
        session_id, used_at = record
        if used_at is None:  # expired, or its session ended
            raise InvalidRefreshToken()
        grace = timedelta(seconds=self.settings.refresh_reuse_grace_seconds)
        if now - used_at <= grace:
            successor = self.deps.tokens.successor_refresh_token(refresh_token)
            live = await repo.live_refresh_token(self.session, digest_token(successor), now)
            if live is not None and live[0] == session_id:
                user = await repo.user_with_live_session(self.session, live[1], session_id)
                if user is not None:
                    return self._token_out(user, session_id, successor)
        self._changed(await repo.revoke_session(self.session, session_id, now))
        log.warning("refresh_token_reuse", session_id=session_id)
        raise InvalidRefreshToken()

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
        user = await repo.user_by_number(self.session, number)
        # An unknown number goes through the same steps (a code is stored, so the resend
        # cooldown applies alike) but nothing is sent or shown and no account can be reset.
        code = await self._issue_otp(number, RESET, deliver=user is not None)
        return OtpSentOut(
            message="If an account exists for this number, a reset code has been sent.",
            otp=code,
            expires_in=self.settings.otp_ttl_seconds,
        )

    async def reset_password(
        self, raw_number: str, code: str, new_password: str, client_ip: str
    ) -> TokenOut:
        number = self.number(raw_number)
        await self._throttle_attempt(client_ip)
        check_password_policy(new_password)
        self.deps.hasher.ensure_room()  # before the code is spent
        await self._use_otp(number, client_ip, RESET, code)
        user = await repo.user_by_number(self.session, number)
        if user is None:
            raise InvalidCredentials()
        # Hashed only once the code is proven: an anonymous request costs no Argon2 run.
        await release_connection(self.session)
        new_hash = await self.deps.hasher.hash(new_password)
        now = self._now()
        await repo.set_password_hash(self.session, user.id, new_hash, now)
        await repo.revoke_all_sessions(self.session, user.id, now)
        self._changed(user.id)
        user.password_hash = new_hash
        user.pending_password_hash = None
        log.info("password_reset", user_id=user.id)
        return await self._issue_tokens(user)

    async def change_password(
        self,
        user: User,
        session_id: int,
        client_ip: str,
        *,
        current_password: str | None,
        otp: str | None,
        new_password: str,
    ) -> TokenOut:
        """Change the password. With one set, `current_password` proves the caller; without,
        a fresh sign-in code does (an access token alone never sets a first password). The
        calling session stays signed in; every other one ends."""
        check_password_policy(new_password)
        self.deps.hasher.ensure_room()  # before an attempt or a code is spent
        number = user.mobile_number
        if user.password_hash is not None:
            if not current_password:
                raise CurrentPasswordRequired()
            guards = await self._check_password(
                number, client_ip, current_password, user.password_hash
            )
            await repo.clear_failures(self.session, guards)
        else:
            if not otp:
                raise OtpRequired()
            await self._use_otp(number, client_ip, LOGIN, otp)
        await commit_now(self.session)
        new_hash = await self.deps.hasher.hash(new_password)
        now = self._now()
        await repo.set_password_hash(self.session, user.id, new_hash, now)
        await repo.revoke_all_sessions(self.session, user.id, now, keep=session_id)
        self._changed(user.id)
        user.password_hash = new_hash
        log.info("password_changed", user_id=user.id)
        return await self._fresh_pair(user, session_id)

    async def confirm(
        self, user: User, client_ip: str, *, current_password: str | None, otp: str | None
    ) -> None:
        """Prove the caller again before something that cannot be undone: the password, or a
        fresh sign-in code (401 `invalid_credentials`, counted as a failed sign-in attempt)."""
        number = user.mobile_number
        if current_password:
            guards = await self._check_password(
                number, client_ip, current_password, user.password_hash
            )
            await repo.clear_failures(self.session, guards)
        elif otp:
            await self._use_otp(number, client_ip, LOGIN, otp)
        else:
            raise ConfirmationRequired()

    async def forget(self, user: User) -> None:
        """The account is being deleted in this transaction: drop the codes and sign-in guards
        of its number (its sessions and tokens go with the user's row) and, once committed,
        what API processes cached about it."""
        await repo.forget_number(self.session, user.mobile_number)
        self._changed(user.id)

    async def _fresh_pair(
        self, user: User, session_id: int, *, is_new_user: bool = False
    ) -> TokenOut:
        """A new access and refresh token for the session (its earlier ones stay valid)."""
        refresh = new_refresh_token()
        await repo.add_refresh_token(
            self.session,
            session_id,
            digest_token(refresh),
            self._now(),
            timedelta(seconds=self.settings.refresh_token_ttl_seconds),
        )
        return self._token_out(user, session_id, refresh, is_new_user=is_new_user)
