"""A user's subscription as Stripe reports it, and the log of the Stripe events applied."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from gemini_backend.core.db import Base, UTCDateTime


class Subscription(Base):
    """One row per user who ever started a checkout: the Stripe customer, and the state of the
    subscription that decides the tier among all of theirs (`stripe_subscriptions`): a live
    one if any is. The tier is derived from `status` (see users/tier.py)."""

    __tablename__ = "subscriptions"

    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    stripe_customer_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    stripe_subscription_id: Mapped[str | None] = mapped_column(String(255), index=True)
    # Stripe's status verbatim (active, trialing, past_due, canceled, incomplete, unpaid, ...),
    # or "none" before any subscription exists.
    status: Mapped[str] = mapped_column(String(32), default="none")
    current_period_end: Mapped[datetime | None] = mapped_column(UTCDateTime())
    cancel_at_period_end: Mapped[bool] = mapped_column(Boolean, default=False)
    # `created` (Unix seconds) of the Stripe event that set the state above: an event older
    # than this never overwrites it, so out-of-order deliveries end in the right state.
    state_created: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class StripeSubscription(Base):
    """Each Stripe subscription of a user, folded from its events one by one; a user may have
    several at once (two checkouts paid), and stays Pro while any of them is live."""

    __tablename__ = "stripe_subscriptions"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(32))
    current_period_end: Mapped[datetime | None] = mapped_column(UTCDateTime())
    cancel_at_period_end: Mapped[bool] = mapped_column(Boolean)
    # `created` of the Stripe event that set the status (see Subscription.state_created).
    state_created: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class StripeEvent(Base):
    """Every Stripe event id seen, inserted in the same transaction as its effect: a replayed or
    concurrently duplicated delivery finds the row and changes nothing."""

    __tablename__ = "stripe_events"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    type: Mapped[str] = mapped_column(String(100))
    created: Mapped[int] = mapped_column(BigInteger)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    # applied | stale (older than the stored state) | ignored (unknown type or user)
    outcome: Mapped[str] = mapped_column(String(16))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())
