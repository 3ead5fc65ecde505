from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from gemini_backend.core.db import Base, BigIntId, UTCDateTime


class OtpCode(Base):
    """The one live OTP of a number for a purpose (`login` or `reset`); a new one replaces it.

    Only an HMAC of the code is stored. `failed_attempts` reaching the maximum burns the code.
    """

    __tablename__ = "otp_codes"
    __table_args__ = (UniqueConstraint("mobile_number", "purpose"),)

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    mobile_number: Mapped[str] = mapped_column(String(20))
    purpose: Mapped[str] = mapped_column(String(16))
    code_digest: Mapped[str] = mapped_column(String(64))
    failed_attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)  # for the purge


class AuthGuard(Base):
    """Consecutive failed sign-in attempts (OTP or password) and the lockout they cause, for one
    subject: a number from one client address, or a number from every address together.

    Kept apart from the OTP so that asking for a new code never resets the count. An attempt is
    counted when it is reserved, before the secret is checked, so a burst cannot outrun it.
    """

    __tablename__ = "auth_guards"

    subject: Mapped[str] = mapped_column(String(128), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # A row quiet for long enough (and not locked) is purged, which forgets its count.
    last_failure_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), index=True)


class AuthSession(Base):
    """A signed-in device. Access tokens name it (`sid`); revoking it ends them and its refresh
    tokens at once."""

    __tablename__ = "auth_sessions"
    # SQLite: a deleted session's id is never given to another (access tokens name it).
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class RefreshToken(Base):
    """One refresh token of a session, stored as a SHA-256 digest; spent when used."""

    __tablename__ = "refresh_tokens"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    session_id: Mapped[int] = mapped_column(
        ForeignKey("auth_sessions.id", ondelete="CASCADE"), index=True
    )
    token_digest: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)  # for the purge
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
