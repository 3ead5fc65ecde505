from __future__ import annotations

from datetime import date

from sqlalchemy import BigInteger, Date, ForeignKey, Integer
from sqlalchemy.orm import Mapped, mapped_column

from gemini_backend.core.db import Base, BigIntId


class DailyUsage(Base):
    """Messages a user sent on a calendar day (in QUOTA_TIMEZONE); one row per user and day."""

    __tablename__ = "daily_usage"
    # Every send updates its row in place (HOT: no index on `count`) when its page has room.
    __table_args__ = {"postgresql_with": {"fillfactor": 75}}

    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)


class MonthlyTokens(Base):
    """A user's tokens in a calendar month (UTC; `month` is its first day) while any tier has a
    MONTHLY_TOKEN_BUDGET_*: `used` as the providers reported them for the replies settled,
    `reserved` held by the replies still in flight (TokenReservation)."""

    __tablename__ = "monthly_tokens"

    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    month: Mapped[date] = mapped_column(Date, primary_key=True)
    used: Mapped[int] = mapped_column(BigInteger, default=0)
    reserved: Mapped[int] = mapped_column(BigInteger, default=0)


class TokenReservation(Base):
    """The tokens a reply in flight holds in its month's MonthlyTokens row: deleted (exactly
    once, by whoever deletes it) when the reply ends, is cancelled or its room is deleted."""

    __tablename__ = "token_reservations"

    reply_id: Mapped[int] = mapped_column(
        BigIntId, ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[int] = mapped_column(BigIntId)
    month: Mapped[date] = mapped_column(Date)
    tokens: Mapped[int] = mapped_column(BigInteger)
