from __future__ import annotations

from datetime import date

from sqlalchemy import Date, ForeignKey, Integer
from sqlalchemy.orm import Mapped, mapped_column

from gemini_backend.core.db import Base


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
