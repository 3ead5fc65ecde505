from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from gemini_backend.core.db import Base, BigIntId, UTCDateTime

if TYPE_CHECKING:
    from gemini_backend.billing.models import Subscription


class User(Base):
    __tablename__ = "users"
    # SQLite: a deleted account's id is never given to another (its tokens name it).
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    # E.164, normalised with `phonenumbers` before it is stored or looked up.
    mobile_number: Mapped[str] = mapped_column(String(20), unique=True)
    name: Mapped[str | None] = mapped_column(String(100))
    email: Mapped[str | None] = mapped_column(String(254))
    password_hash: Mapped[str | None] = mapped_column(String(255))
    # A password given at signup, before anyone proved the number: it becomes `password_hash`
    # only when an OTP verification also presents it, and is dropped by any other.
    pending_password_hash: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # Loaded with the user in the same query (a LEFT JOIN): the tier is needed on most requests.
    subscription: Mapped[Subscription | None] = relationship(
        lazy="joined", viewonly=True, uselist=False
    )
