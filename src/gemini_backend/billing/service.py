"""Checkout, the customer portal, and applying Stripe's events to a user's subscription.

Stripe calls never run while the request holds a database connection (or SQLite's write lock):
the session reads, commits, calls Stripe, and then writes in a new short transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from gemini_backend.billing.events import StripeEventIn, SubscriptionFacts, facts_of
from gemini_backend.billing.gateway import StripeGateway
from gemini_backend.billing.models import StripeEvent, StripeSubscription, Subscription
from gemini_backend.config import Settings
from gemini_backend.core.db import after_commit, release_connection
from gemini_backend.core.errors import AppError, Conflict, ServiceUnavailable
from gemini_backend.core.sql import insert_for
from gemini_backend.users.models import User
from gemini_backend.users.tier import PRO_STATUSES, tier_of

if TYPE_CHECKING:
    import stripe

    from gemini_backend.auth.principals import Principals

log = structlog.get_logger(__name__)

# On a tie of `created` (Stripe stamps in whole seconds), a status only gives way to one at
# least as final: incomplete < live states < canceled (a canceled subscription never revives).
_STATUS_RANK = {"none": 0, "incomplete": 0, "incomplete_expired": 1, "canceled": 2}
_LIVE_STATUSES = PRO_STATUSES | {"past_due"}
# Nothing left to cancel at Stripe.
_ENDED_STATUSES = ("canceled", "incomplete_expired", "none")


class AlreadyPro(Conflict):
    code = "already_pro"
    detail = "You are already on the Pro plan; manage it at POST /subscription/portal."


class PaymentProcessing(Conflict):
    code = "payment_processing"
    detail = (
        "Your last checkout is paid and its subscription is being set up; the Pro plan "
        "appears in a moment (GET /subscription/status)."
    )


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
        import stripe  # imported at its first use (billing/gateway.py)

        if tier_of(user, self.now, self.settings) == "pro":
            raise AlreadyPro()
        gateway = self._require_gateway()
        customer_id = user.subscription.stripe_customer_id if user.subscription else None
        await release_connection(self.session)
        try:
            if customer_id is None:
                customer_id = await self._create_customer(gateway, user)
            latest = await self._latest_checkout(gateway, customer_id)
            if latest is not None and latest.status == "open" and latest.url:
                log.info("checkout_reused", session_id=latest.id, customer_id=customer_id)
                return CheckoutStarted(url=latest.url, session_id=latest.id)
            if latest is not None and await self._awaiting_webhook(latest):
                raise PaymentProcessing()
            # Keyed by the session it follows: two concurrent requests (which both saw the same
            # latest session) create one new session, and a later one another.
            after = latest.id if latest is not None else "none"
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
                },
                options={"idempotency_key": f"gemini-backend-checkout-{user.id}-after-{after}"},
            )
        except stripe.StripeError as exc:
            raise _provider_error(exc, "checkout") from exc
        if not checkout.url:
            raise PaymentProviderError("Stripe returned a checkout session without a URL.")
        log.info("checkout_started", session_id=checkout.id, customer_id=customer_id)
        return CheckoutStarted(url=checkout.url, session_id=checkout.id)

    async def _awaiting_webhook(self, checkout: stripe.checkout.Session) -> bool:
        """Paid, but its subscription's events have not arrived yet: a new checkout now would
        make the user pay twice."""
        if checkout.status != "complete" or not checkout.subscription:
            return False
        subscription = checkout.subscription
        subscription_id = subscription if isinstance(subscription, str) else subscription.id
        known = (
            await self.session.execute(
                select(StripeSubscription.id).where(StripeSubscription.id == subscription_id)
            )
        ).scalar_one_or_none()
        await release_connection(self.session)  # not held across the next Stripe call
        return known is None

    @staticmethod
    async def _latest_checkout(
        gateway: StripeGateway, customer_id: str
    ) -> stripe.checkout.Session | None:
        """The customer's newest checkout session (Stripe lists newest first)."""
        sessions = await gateway.client.v1.checkout.sessions.list_async(
            params={"customer": customer_id, "limit": 1}
        )
        return sessions.data[0] if sessions.data else None

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
        import stripe

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

    # --- account deletion ------------------------------------------------------------------
    async def cancel_everything(self, user_id: int) -> list[str]:
        """Cancel at Stripe, at once, every subscription of the user that is not over yet
        (the account is about to be deleted); the ids cancelled. Raises (and nothing of the
        account is deleted) when one could not be: better than deleting an account whose card
        is still charged."""
        live = list(
            (
                await self.session.scalars(
                    select(StripeSubscription.id).where(
                        StripeSubscription.user_id == user_id,
                        StripeSubscription.status.not_in(_ENDED_STATUSES),
                    )
                )
            ).all()
        )
        await release_connection(self.session)  # not held across Stripe's round trips
        if not live:
            return []
        gateway = self._require_gateway()
        for subscription_id in live:
            try:
                await gateway.client.v1.subscriptions.cancel_async(subscription_id)
            except stripe.InvalidRequestError as exc:
                if exc.http_status != 404:  # gone at Stripe already: nothing to cancel
                    raise _provider_error(exc, "cancel") from exc
            except stripe.StripeError as exc:
                raise _provider_error(exc, "cancel") from exc
            log.info("subscription_cancelled_for_erasure", subscription_id=subscription_id)
        return live

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
                select(StripeSubscription.user_id).where(
                    StripeSubscription.id == facts.subscription_id
                )
            )
        return None

    async def _fold(self, user_id: int, facts: SubscriptionFacts, created: int) -> str:
        """Fold the facts into their subscription, then show on the user's row the one that
        decides the tier. Order-independent by construction: each subscription's state only
        moves forward (see `_merge`), and the row is a function of all of them."""
        row = await self._locked_row(user_id)
        if row.stripe_customer_id is None and facts.customer_id is not None:
            row.stripe_customer_id = facts.customer_id
        if facts.subscription_id is None:
            return "ignored"  # nothing to say about a subscription
        sub = await self.session.get(
            StripeSubscription, facts.subscription_id, populate_existing=True
        )
        if sub is None:
            sub = StripeSubscription(
                id=facts.subscription_id,
                user_id=user_id,
                status="none",
                current_period_end=None,
                cancel_at_period_end=False,
                state_created=0,
                created_at=self.now,
                updated_at=self.now,
            )
        elif sub.user_id != user_id:
            return "ignored"  # another user's subscription: never moved between users
        if not self._merge(sub, facts, created):
            return "stale"
        sub.updated_at = self.now
        self.session.add(sub)
        await self.session.flush()
        subscriptions = (
            await self.session.scalars(
                select(StripeSubscription).where(StripeSubscription.user_id == user_id)
            )
        ).all()
        self._show(row, max(subscriptions, key=_precedence))
        principals = self.principals
        if principals is not None:
            # The plan is part of what API processes cache about a signed-in user.
            after_commit(self.session, lambda: principals.invalidate(user_id))
        log.info(
            "subscription_changed",
            user_id=user_id,
            subscription_id=sub.id,
            status=sub.status,
            shown=row.stripe_subscription_id,
            tier_status=row.status,
            live=sum(1 for one in subscriptions if one.status in _LIVE_STATUSES),
        )
        return "applied"

    async def _locked_row(self, user_id: int) -> Subscription:
        """The user's row, created if need be and locked: a user's events apply one at a time."""
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
        return (
            await self.session.execute(
                select(Subscription)
                .where(Subscription.user_id == user_id)
                .with_for_update()
                .execution_options(populate_existing=True)
            )
        ).scalar_one()

    def _merge(self, sub: StripeSubscription, facts: SubscriptionFacts, created: int) -> bool:
        """Apply the facts to one subscription unless its state is newer: the period end only
        moves forward, canceled is final, and a status is replaced only by one from an event
        at least as recent. True if anything changed."""
        changed = False
        if facts.current_period_end is not None and (
            sub.current_period_end is None or facts.current_period_end > sub.current_period_end
        ):
            sub.current_period_end = facts.current_period_end
            changed = True
        if facts.status is not None and self._status_wins(sub, facts.status, facts, created):
            sub.status = facts.status
            if facts.cancel_at_period_end is not None:
                sub.cancel_at_period_end = facts.cancel_at_period_end
            sub.state_created = max(sub.state_created, created)
            changed = True
        return changed

    @staticmethod
    def _status_wins(
        sub: StripeSubscription, status: str, facts: SubscriptionFacts, created: int
    ) -> bool:
        if facts.only_if_live and sub.status not in PRO_STATUSES:
            return False  # a failed first payment does not start a grace period
        if sub.status == "canceled":
            return status == "canceled" and created > sub.state_created
        if created != sub.state_created:
            return created > sub.state_created
        return _STATUS_RANK.get(status, 1) >= _STATUS_RANK.get(sub.status, 1)

    def _show(self, row: Subscription, sub: StripeSubscription) -> None:
        row.stripe_subscription_id = sub.id
        row.status = sub.status
        row.current_period_end = sub.current_period_end
        row.cancel_at_period_end = sub.cancel_at_period_end
        row.state_created = sub.state_created
        row.updated_at = self.now


_EARLIEST = datetime.min.replace(tzinfo=UTC)
_STANDING = {"active": 2, "trialing": 2, "past_due": 1}


def _precedence(sub: StripeSubscription) -> tuple[int, datetime, int, str]:
    """Which of a user's subscriptions decides the tier: a Pro one, else one in its grace
    period (the latest paid period first), else the latest news of a dead one."""
    standing = _STANDING.get(sub.status, 0)
    period_end = (sub.current_period_end or _EARLIEST) if standing else _EARLIEST
    return standing, period_end, sub.state_created, sub.id


def _with_session_placeholder(url: str) -> str:
    """Stripe substitutes {CHECKOUT_SESSION_ID} in the success URL."""
    if "{CHECKOUT_SESSION_ID}" in url:
        return url
    return f"{url}{'&' if '?' in url else '?'}session_id={{CHECKOUT_SESSION_ID}}"


def _provider_error(exc: stripe.StripeError, action: str) -> AppError:
    import stripe

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
