"""Checkout, the customer portal, and applying Stripe's events to a user's subscription.

Stripe calls never run while the request holds a database connection (or SQLite's write lock):
the session reads, commits, calls Stripe, and then writes in a new short transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import stripe
import structlog
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from gemini_backend.billing.events import StripeEventIn, SubscriptionFacts, facts_of
from gemini_backend.billing.gateway import StripeGateway
from gemini_backend.billing.models import StripeEvent, Subscription
from gemini_backend.billing.plans import PRO_STATUSES
from gemini_backend.config import Settings
from gemini_backend.core.db import after_commit, release_connection
from gemini_backend.core.errors import AppError, Conflict, ServiceUnavailable
from gemini_backend.core.sql import insert_for
from gemini_backend.users.models import User
from gemini_backend.users.service import tier_of

if TYPE_CHECKING:
    from gemini_backend.auth.principals import Principals

log = structlog.get_logger(__name__)

# On a tie of `created` (Stripe stamps in whole seconds), a status only gives way to one at
# least as final: incomplete < live states < canceled (a canceled subscription never revives).
_STATUS_RANK = {"none": 0, "incomplete": 0, "incomplete_expired": 1, "canceled": 2}
_LIVE_STATUSES = PRO_STATUSES | {"past_due"}


class AlreadyPro(Conflict):
    code = "already_pro"
    detail = "You are already on the Pro plan; manage it at POST /subscription/portal."


class NoSubscription(Conflict):
    code = "no_subscription"
    detail = "There is no subscription to manage yet; start one with POST /subscribe/pro."


class PaymentsUnavailable(ServiceUnavailable):
    code = "payments_unavailable"
    detail = "Payments are not configured on this server (STRIPE_SECRET_KEY is unset)."


class PaymentProviderError(AppError):
    status_code = 502
    code = "payment_provider_error"
    detail = "The payment provider could not be reached or refused the request; try again."


@dataclass(frozen=True, slots=True)
class CheckoutStarted:
    url: str
    session_id: str


class BillingService:
    def __init__(
        self,
        session: AsyncSession,
        settings: Settings,
        gateway: StripeGateway | None,
        now: datetime,
        principals: Principals | None = None,
    ) -> None:
        self.session = session
        self.settings = settings
        self.gateway = gateway
        self.now = now
        self.principals = principals

    # --- checkout and portal ---------------------------------------------------------------
    def _require_gateway(self) -> StripeGateway:
        if self.gateway is None:
            raise PaymentsUnavailable()
        return self.gateway

    async def start_checkout(self, user: User) -> CheckoutStarted:
        if tier_of(user, self.now, self.settings) == "pro":
            raise AlreadyPro()
        gateway = self._require_gateway()
        customer_id = user.subscription.stripe_customer_id if user.subscription else None
        await release_connection(self.session)
        try:
            if customer_id is None:
                customer_id = await self._create_customer(gateway, user)
            checkout = await gateway.client.v1.checkout.sessions.create_async(
                params={
                    "mode": "subscription",
                    "customer": customer_id,
                    "client_reference_id": str(user.id),
                    "line_items": [{"price": self.settings.stripe_pro_price_id, "quantity": 1}],
                    "success_url": _with_session_placeholder(self.settings.success_url),
                    "cancel_url": self.settings.cancel_url,
                    "metadata": {"user_id": str(user.id)},
                    "subscription_data": {"metadata": {"user_id": str(user.id)}},
                }
            )
        except stripe.StripeError as exc:
            raise _provider_error(exc, "checkout") from exc
        if not checkout.url:
            raise PaymentProviderError("Stripe returned a checkout session without a URL.")
        log.info("checkout_started", session_id=checkout.id, customer_id=customer_id)
        return CheckoutStarted(url=checkout.url, session_id=checkout.id)

    async def _create_customer(self, gateway: StripeGateway, user: User) -> str:
        # The idempotency key makes two concurrent first checkouts create one customer.
        customer = await gateway.client.v1.customers.create_async(
            params={"phone": user.mobile_number, "metadata": {"user_id": str(user.id)}},
            options={"idempotency_key": f"gemini-backend-customer-{user.id}"},
        )
        table = Subscription.__table__
        stmt = insert_for(self.session, table).values(
            user_id=user.id,
            stripe_customer_id=customer.id,
            status="none",
            cancel_at_period_end=False,
            state_created=0,
            created_at=self.now,
            updated_at=self.now,
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=[table.c.user_id],
            set_={"stripe_customer_id": customer.id, "updated_at": self.now},
            where=table.c.stripe_customer_id.is_(None),
        )
        await self.session.execute(stmt)
        await self.session.commit()
        stored = await self.session.scalar(
            select(Subscription.stripe_customer_id).where(Subscription.user_id == user.id)
        )
        await release_connection(self.session)
        return stored or customer.id

    async def portal_url(self, user: User) -> str:
        customer_id = user.subscription.stripe_customer_id if user.subscription else None
        if customer_id is None:
            raise NoSubscription()
        gateway = self._require_gateway()
        await release_connection(self.session)
        try:
            portal = await gateway.client.v1.billing_portal.sessions.create_async(
                params={"customer": customer_id, "return_url": self.settings.portal_return_target}
            )
        except stripe.StripeError as exc:
            raise _provider_error(exc, "portal") from exc
        return portal.url

    # --- webhook ---------------------------------------------------------------------------
    async def apply_event(self, event: StripeEventIn) -> str:
        """Record the event id and apply it, in the request's transaction. Returns the outcome:
        applied, stale (older than the stored state), ignored, or duplicate."""
        table = StripeEvent.__table__
        inserted = await self.session.execute(
            insert_for(self.session, table)
            .values(
                id=event.id,
                type=event.type,
                created=event.created,
                outcome="pending",
                received_at=self.now,
            )
            .on_conflict_do_nothing(index_elements=[table.c.id])
            .returning(table.c.id)
        )
        if inserted.scalar_one_or_none() is None:
            return "duplicate"  # PostgreSQL waited for a concurrent twin to commit first
        facts = facts_of(event)
        user_id: int | None = None
        outcome = "ignored"
        if facts is not None:
            user_id = await self._user_of(facts)
            if user_id is not None:
                outcome = await self._fold(user_id, facts, event.created)
        await self.session.execute(
            update(StripeEvent)
            .where(StripeEvent.id == event.id)
            .values(outcome=outcome, user_id=user_id)
        )
        return outcome

    async def _user_of(self, facts: SubscriptionFacts) -> int | None:
        if facts.customer_id is not None:
            known = await self.session.scalar(
                select(Subscription.user_id).where(
                    Subscription.stripe_customer_id == facts.customer_id
                )
            )
            if known is not None:
                return known
        if facts.user_hint is not None:
            known = await self.session.scalar(select(User.id).where(User.id == facts.user_hint))
            if known is not None:
                return known
        if facts.subscription_id is not None:
            return await self.session.scalar(
                select(Subscription.user_id).where(
                    Subscription.stripe_subscription_id == facts.subscription_id
                )
            )
        return None

    async def _fold(self, user_id: int, facts: SubscriptionFacts, created: int) -> str:
        """Apply the facts unless the stored state is newer. Order-independent by construction:
        the period end only moves forward, canceled is final for a subscription, and a status
        is replaced only by one from an event at least as recent."""
        table = Subscription.__table__
        await self.session.execute(
            insert_for(self.session, table)
            .values(
                user_id=user_id,
                status="none",
                cancel_at_period_end=False,
                state_created=0,
                created_at=self.now,
                updated_at=self.now,
            )
            .on_conflict_do_nothing(index_elements=[table.c.user_id])
        )
        row = (
            await self.session.execute(
                select(Subscription)
                .where(Subscription.user_id == user_id)
                .with_for_update()
                .execution_options(populate_existing=True)
            )
        ).scalar_one()
        if row.stripe_customer_id is None and facts.customer_id is not None:
            row.stripe_customer_id = facts.customer_id
        outcome = "stale"
        same = facts.subscription_id is None or row.stripe_subscription_id in (
            None,
            facts.subscription_id,
        )
        if same:
            if facts.current_period_end is not None and (
                row.current_period_end is None or facts.current_period_end > row.current_period_end
            ):
                row.current_period_end = facts.current_period_end
                outcome = "applied"
            if self._status_wins(row, facts, created):
                self._set_state(row, facts, created)
                outcome = "applied"
        elif (
            created >= row.state_created
            and facts.status is not None
            and not (facts.status not in _LIVE_STATUSES and row.status in _LIVE_STATUSES)
        ):
            # A different subscription (a new one after a cancellation) takes over, unless it
            # is dead news while the user's current subscription is live.
            row.stripe_subscription_id = facts.subscription_id
            row.current_period_end = facts.current_period_end
            row.cancel_at_period_end = False
            self._set_state(row, facts, created)
            outcome = "applied"
        if outcome == "applied":
            row.updated_at = self.now
            principals = self.principals
            if principals is not None:
                # The plan is part of what API processes cache about a signed-in user.
                after_commit(self.session, lambda: principals.invalidate(user_id))
            log.info(
                "subscription_changed",
                user_id=user_id,
                subscription_id=row.stripe_subscription_id,
                status=row.status,
                period_end=row.current_period_end.isoformat() if row.current_period_end else None,
            )
        return outcome

    @staticmethod
    def _status_wins(row: Subscription, facts: SubscriptionFacts, created: int) -> bool:
        if facts.status is None:
            return False
        if facts.only_if_live and row.status not in PRO_STATUSES:
            return False  # a failed first payment does not start a grace period
        if row.status == "canceled" and row.stripe_subscription_id is not None:
            return facts.status == "canceled" and created > row.state_created
        if created != row.state_created:
            return created > row.state_created
        return _STATUS_RANK.get(facts.status, 1) >= _STATUS_RANK.get(row.status, 1)

    @staticmethod
    def _set_state(row: Subscription, facts: SubscriptionFacts, created: int) -> None:
        if facts.subscription_id is not None:
            row.stripe_subscription_id = facts.subscription_id
        if facts.status is not None:
            row.status = facts.status
        if facts.cancel_at_period_end is not None:
            row.cancel_at_period_end = facts.cancel_at_period_end
        row.state_created = max(row.state_created, created)


def _with_session_placeholder(url: str) -> str:
    """Stripe substitutes {CHECKOUT_SESSION_ID} in the success URL."""
    if "{CHECKOUT_SESSION_ID}" in url:
        return url
    return f"{url}{'&' if '?' in url else '?'}session_id={{CHECKOUT_SESSION_ID}}"


def _provider_error(exc: stripe.StripeError, action: str) -> AppError:
    log.warning(
        "stripe_error",
        action=action,
        error=type(exc).__name__,
        status=exc.http_status,
        stripe_code=exc.code,
        message=exc.user_message,
    )
    if isinstance(exc, stripe.APIConnectionError):
        return PaymentProviderError("The payment provider could not be reached; try again.")
    return PaymentProviderError()


def subscription_fields(row: Subscription | None) -> dict[str, Any]:
    """The subscription part of GET /subscription/status."""
    if row is None:
        return {
            "status": "none",
            "stripe_status": None,
            "subscription_id": None,
            "current_period_end": None,
            "cancel_at_period_end": False,
        }
    return {
        "status": _contract_status(row.status),
        "stripe_status": row.status if row.stripe_subscription_id else None,
        "subscription_id": row.stripe_subscription_id,
        "current_period_end": row.current_period_end,
        "cancel_at_period_end": row.cancel_at_period_end,
    }


def _contract_status(status: str) -> str:
    """Stripe's status, folded into the five of the API contract."""
    if status in {"active", "trialing", "past_due", "canceled"}:
        return status
    if status in {"unpaid", "paused"}:
        return "past_due"
    return "none"  # incomplete, incomplete_expired: no subscription took effect
