"""Queries of the auth domain. Every check-and-change is one conditional statement, so that
concurrent requests cannot both win (one OTP use, one refresh rotation)."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, bindparam, case, delete, func, literal, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from gemini_backend.auth.models import AuthGuard, AuthSession, OtpCode, RefreshToken
from gemini_backend.core.db import UTCDateTime
from gemini_backend.core.sql import bounded_delete, insert_for
from gemini_backend.users.models import User

# --- OTPs ---------------------------------------------------------------------------------


async def store_otp(
    session: AsyncSession,
    *,
    mobile_number: str,
    purpose: str,
    code_digest: str,
    now: datetime,
    ttl: timedelta,
    resend_after: timedelta,
) -> bool:
    """Store a new code, replacing the previous one unless it is younger than `resend_after`.

    Returns False (nothing stored) during the resend cooldown.
    """
    table = OtpCode.__table__
    stmt = insert_for(session, table).values(
        mobile_number=mobile_number,
        purpose=purpose,
        code_digest=code_digest,
        failed_attempts=0,
        created_at=now,
        expires_at=now + ttl,
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=[table.c.mobile_number, table.c.purpose],
        set_={
            "code_digest": stmt.excluded.code_digest,
            "failed_attempts": 0,
            "created_at": stmt.excluded.created_at,
            "expires_at": stmt.excluded.expires_at,
        },
        where=table.c.created_at <= now - resend_after,
    ).returning(table.c.id)
    return (await session.execute(stmt)).scalar_one_or_none() is not None


async def otp_created_at(
    session: AsyncSession, mobile_number: str, purpose: str
) -> datetime | None:
    return (
        await session.execute(
            select(OtpCode.created_at).where(
                OtpCode.mobile_number == mobile_number, OtpCode.purpose == purpose
            )
        )
    ).scalar_one_or_none()


async def reserve_otp_attempt(
    session: AsyncSession,
    *,
    mobile_number: str,
    purpose: str,
    now: datetime,
    max_attempts: int,
) -> tuple[int, str] | None:
    """Count one try of the live code before it is compared: (its id, its digest), or None when
    there is no live code (none, expired or burned). Concurrent tries never see a stale count."""
    row = (
        await session.execute(
            update(OtpCode)
            .where(
                OtpCode.mobile_number == mobile_number,
                OtpCode.purpose == purpose,
                OtpCode.expires_at > now,
                OtpCode.failed_attempts < max_attempts,
            )
            .values(failed_attempts=OtpCode.failed_attempts + 1)
            .returning(OtpCode.id, OtpCode.code_digest)
        )
    ).one_or_none()
    return (row[0], row[1]) if row else None


async def consume_otp(session: AsyncSession, otp_id: int, code_digest: str) -> bool:
    """Use the code; one caller wins, ever."""
    stmt = (
        delete(OtpCode)
        .where(OtpCode.id == otp_id, OtpCode.code_digest == code_digest)
        .returning(OtpCode.id)
    )
    return (await session.execute(stmt)).scalar_one_or_none() is not None


async def delete_otp(session: AsyncSession, mobile_number: str, purpose: str) -> None:
    await session.execute(
        delete(OtpCode).where(OtpCode.mobile_number == mobile_number, OtpCode.purpose == purpose)
    )


# --- lockout ------------------------------------------------------------------------------


async def forget_number(session: AsyncSession, mobile_number: str) -> None:
    """Every code and sign-in guard naming the number (a guard's subject is the number, or
    the number, a space and a client address)."""
    await session.execute(delete(OtpCode).where(OtpCode.mobile_number == mobile_number))
    await session.execute(
        delete(AuthGuard).where(
            or_(
                AuthGuard.subject == mobile_number,
                func.substr(AuthGuard.subject, 1, len(mobile_number) + 1) == f"{mobile_number} ",
            )
        )
    )


async def reserve_attempt(
    session: AsyncSession, subject: str, *, now: datetime, threshold: int, lockout: timedelta
) -> bool:
    """Count one sign-in attempt on `subject` before its secret is checked, in one statement.

    False when the subject is locked. The attempt that reaches `threshold` locks it at once (a
    success clears the guard again), so no more than `threshold` are ever checked in a row.
    """
    table = AuthGuard.__table__
    first_lock = now + lockout if threshold <= 1 else None
    stmt = insert_for(session, table).values(
        subject=subject, failures=1, locked_until=first_lock, last_failure_at=now
    )
    lapsed = table.c.locked_until.is_not(None) & (table.c.locked_until <= now)
    failures = case((lapsed, 1), else_=table.c.failures + 1)
    stmt = stmt.on_conflict_do_update(
        index_elements=[table.c.subject],
        set_={
            "failures": failures,
            "locked_until": case(
                (failures >= threshold, literal(now + lockout, UTCDateTime())), else_=None
            ),
            "last_failure_at": now,
        },
        where=table.c.locked_until.is_(None) | lapsed,
    ).returning(table.c.failures)
    return (await session.execute(stmt)).scalar_one_or_none() is not None


async def locked_until(
    session: AsyncSession, subjects: list[str], now: datetime
) -> datetime | None:
    """When the latest lock among `subjects` ends, if any is locked."""
    until = (
        await session.execute(
            select(func.max(AuthGuard.locked_until)).where(
                AuthGuard.subject.in_(subjects), AuthGuard.locked_until > now
            )
        )
    ).scalar_one_or_none()
    return until


async def clear_failures(session: AsyncSession, subjects: list[str]) -> None:
    """One statement per guard, in the order the reservations lock them (no deadlock with a
    concurrent reservation of the same guards)."""
    for subject in subjects:
        await session.execute(delete(AuthGuard).where(AuthGuard.subject == subject))


# --- users --------------------------------------------------------------------------------


async def user_by_number(session: AsyncSession, mobile_number: str) -> User | None:
    return (
        await session.execute(select(User).where(User.mobile_number == mobile_number))
    ).scalar_one_or_none()


# The user of a live session as an ORM object (a refresh answers with the user). Signed-in
# requests read the same through auth.principals. Built once; values bound per execution.
_USER_WITH_LIVE_SESSION = (
    select(User)
    .join(AuthSession, AuthSession.user_id == User.id)
    .where(
        User.id == bindparam("user_id"),
        AuthSession.id == bindparam("session_id"),
        AuthSession.revoked_at.is_(None),
    )
)


async def user_with_live_session(
    session: AsyncSession, user_id: int, session_id: int
) -> User | None:
    params = {"user_id": user_id, "session_id": session_id}
    return (await session.execute(_USER_WITH_LIVE_SESSION, params)).scalar_one_or_none()


async def insert_user(
    session: AsyncSession,
    *,
    mobile_number: str,
    now: datetime,
    name: str | None = None,
    email: str | None = None,
    pending_password_hash: str | None = None,
) -> int | None:
    """Create the account; None if the number is already registered."""
    table = User.__table__
    stmt = (
        insert_for(session, table)
        .values(
            mobile_number=mobile_number,
            name=name,
            email=email,
            pending_password_hash=pending_password_hash,
            created_at=now,
            updated_at=now,
        )
        .on_conflict_do_nothing(index_elements=[table.c.mobile_number])
        .returning(table.c.id)
    )
    result: int | None = (await session.execute(stmt)).scalar_one_or_none()
    return result


async def set_password_hash(
    session: AsyncSession, user_id: int, password_hash: str, now: datetime
) -> None:
    await session.execute(
        update(User)
        .where(User.id == user_id)
        .values(password_hash=password_hash, pending_password_hash=None, updated_at=now)
    )


async def settle_pending_password(
    session: AsyncSession, user_id: int, *, activate: bool, now: datetime
) -> None:
    """The number is proven: the pending password becomes the password, or is dropped."""
    values: dict[str, object] = {"pending_password_hash": None, "updated_at": now}
    if activate:
        values["password_hash"] = User.pending_password_hash
    await session.execute(
        update(User)
        .where(User.id == user_id, User.pending_password_hash.is_not(None))
        .values(values)
    )


# --- sessions and refresh tokens ----------------------------------------------------------


async def create_session(session: AsyncSession, user_id: int, now: datetime) -> int:
    stmt = (
        insert_for(session, AuthSession.__table__)
        .values(user_id=user_id, created_at=now)
        .returning(AuthSession.__table__.c.id)
    )
    session_id: int = (await session.execute(stmt)).scalar_one()
    return session_id


async def add_refresh_token(
    session: AsyncSession, session_id: int, token_digest: str, now: datetime, ttl: timedelta
) -> None:
    await session.execute(
        insert_for(session, RefreshToken.__table__).values(
            session_id=session_id, token_digest=token_digest, created_at=now, expires_at=now + ttl
        )
    )


async def spend_refresh_token(
    session: AsyncSession, token_digest: str, now: datetime
) -> tuple[int, int] | None:
    """Mark a live refresh token used; (session id, user id) for the one caller that wins."""
    stmt = (
        update(RefreshToken)
        .where(*_usable_token(token_digest, now))
        .values(used_at=now)
        .returning(RefreshToken.session_id)
    )
    session_id = (await session.execute(stmt)).scalar_one_or_none()
    if session_id is None:
        return None
    user_id = (
        await session.execute(select(AuthSession.user_id).where(AuthSession.id == session_id))
    ).scalar_one()
    return session_id, user_id


async def live_refresh_token(
    session: AsyncSession, token_digest: str, now: datetime
) -> tuple[int, int] | None:
    """(session id, user id) of a refresh token that can still be used, without spending it."""
    row = (
        await session.execute(
            select(RefreshToken.session_id, AuthSession.user_id)
            .join(AuthSession, AuthSession.id == RefreshToken.session_id)
            .where(*_usable_token(token_digest, now))
        )
    ).one_or_none()
    return (row[0], row[1]) if row else None


def _usable_token(token_digest: str, now: datetime) -> tuple[ColumnElement[bool], ...]:
    """The refresh token with this digest, unused, unexpired, of a live session."""
    live_sessions = select(AuthSession.id).where(AuthSession.revoked_at.is_(None))
    return (
        RefreshToken.token_digest == token_digest,
        RefreshToken.used_at.is_(None),
        RefreshToken.expires_at > now,
        RefreshToken.session_id.in_(live_sessions),
    )


async def refresh_token_record(
    session: AsyncSession, token_digest: str
) -> tuple[int, datetime | None] | None:
    row = (
        await session.execute(
            select(RefreshToken.session_id, RefreshToken.used_at).where(
                RefreshToken.token_digest == token_digest
            )
        )
    ).one_or_none()
    return (row[0], row[1]) if row else None


async def session_owner(session: AsyncSession, session_id: int) -> int | None:
    return (
        await session.execute(select(AuthSession.user_id).where(AuthSession.id == session_id))
    ).scalar_one_or_none()


async def revoke_session(session: AsyncSession, session_id: int, now: datetime) -> int | None:
    """The session's user if it was live until now."""
    user_id: int | None = (
        await session.execute(
            update(AuthSession)
            .where(AuthSession.id == session_id, AuthSession.revoked_at.is_(None))
            .values(revoked_at=now)
            .returning(AuthSession.user_id)
        )
    ).scalar_one_or_none()
    return user_id


async def revoke_all_sessions(
    session: AsyncSession, user_id: int, now: datetime, *, keep: int | None = None
) -> None:
    """End every live session of the user but `keep`."""
    stmt = update(AuthSession).where(
        AuthSession.user_id == user_id, AuthSession.revoked_at.is_(None)
    )
    if keep is not None:
        stmt = stmt.where(AuthSession.id != keep)
    await session.execute(stmt.values(revoked_at=now))


# --- purge of rows past their use (worker/housekeeping.py) ---------------------------------
# Each call deletes at most `limit` rows, in the caller's short transaction.


async def purge_expired_otps(
    session: AsyncSession, *, now: datetime, resend_after: timedelta, limit: int
) -> int:
    """Codes past their expiry and their resend cooldown (a row inside the cooldown is what
    refuses an early second code)."""
    table = OtpCode.__table__
    stmt = bounded_delete(
        table,
        table.c.id,
        table.c.expires_at <= now,
        table.c.created_at <= now - resend_after,
        limit=limit,
    )
    return (await session.execute(stmt)).rowcount  # type: ignore[attr-defined, no-any-return]


async def purge_expired_refresh_tokens(session: AsyncSession, *, now: datetime, limit: int) -> int:
    """Tokens past their expiry, spent or not: none can be used, and a replayed one is refused
    as unknown (its session's live token, if any, is newer and still stored)."""
    table = RefreshToken.__table__
    stmt = bounded_delete(table, table.c.id, table.c.expires_at <= now, limit=limit)
    return (await session.execute(stmt)).rowcount  # type: ignore[attr-defined, no-any-return]


async def purge_stale_auth_guards(
    session: AsyncSession, *, now: datetime, quiet: timedelta, limit: int
) -> int:
    """Guards not locked and with no failure for `quiet`: the count they hold is forgotten,
    as a success would reset it."""
    table = AuthGuard.__table__
    stmt = bounded_delete(
        table,
        table.c.subject,
        or_(table.c.locked_until.is_(None), table.c.locked_until <= now),
        table.c.last_failure_at <= now - quiet,
        limit=limit,
    )
    return (await session.execute(stmt)).rowcount  # type: ignore[attr-defined, no-any-return]
