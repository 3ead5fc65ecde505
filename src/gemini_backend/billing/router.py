"""`/subscribe/pro`, `/webhook/stripe`, `/subscription/status`, `/subscription/portal`, and the
small pages Stripe Checkout returns to."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import structlog
from fastapi import APIRouter, Depends, Header, Request, status
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field

from gemini_backend.auth.dependencies import CurrentUserRecord
from gemini_backend.billing.events import HANDLED_TYPES, InvalidEvent, InvalidSignature, verify
from gemini_backend.billing.pages import page
from gemini_backend.billing.service import (
    AlreadyPro,
    BillingService,
    NoSubscription,
    PaymentProcessing,
    PaymentProviderError,
    PaymentsUnavailable,
    subscription_fields,
)
from gemini_backend.core.db import DbSession
from gemini_backend.core.errors import AppError
from gemini_backend.core.metrics import WEBHOOK_EVENTS
from gemini_backend.core.openapi import AUTH_ERRORS, Responses, error_doc_for
from gemini_backend.services import services_of
from gemini_backend.users.schemas import TOKEN_BUDGET_EXAMPLE, TokenBudgetOut
from gemini_backend.users.tier import Tier, tier_of

log = structlog.get_logger(__name__)

router = APIRouter(tags=["Subscriptions"])

PAYMENTS_UNAVAILABLE: Responses = error_doc_for(
    ("Payments are not configured: production without STRIPE_SECRET_KEY", PaymentsUnavailable)
)
PROVIDER_ERRORS: Responses = {
    **error_doc_for(("Stripe refused the request or could not be reached", PaymentProviderError)),
    **PAYMENTS_UNAVAILABLE,
}


class CheckoutOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "checkout_url": "https://checkout.stripe.com/c/pay/cs_test_a1b2",
                "url": "https://checkout.stripe.com/c/pay/cs_test_a1b2",
                "session_id": "cs_test_a1b2",
            }
        }
    )

    checkout_url: str = Field(description="Open this page to pay (Stripe Checkout or the mock)")
    url: str = Field(description="The same as checkout_url")
    session_id: str


class SubscriptionOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "tier": "pro",
                "status": "active",
                "stripe_status": "active",
                "subscription_id": "sub_1a2b",
                "current_period_end": "2026-12-22T10:00:00Z",
                "cancel_at_period_end": False,
                "daily_limit": None,
                "used_today": 7,
                "remaining_today": None,
                "monthly_tokens": TOKEN_BUDGET_EXAMPLE,
            }
        }
    )

    tier: Tier
    status: str = Field(description="none | active | trialing | past_due | canceled")
    stripe_status: str | None = Field(description="Stripe's own status, verbatim")
    subscription_id: str | None
    current_period_end: datetime | None
    cancel_at_period_end: bool
    daily_limit: int | None = Field(description="null = unlimited")
    used_today: int
    remaining_today: int | None = Field(description="null = unlimited")
    monthly_tokens: TokenBudgetOut | None = Field(
        description="The month's token budget; null when no MONTHLY_TOKEN_BUDGET_* is set"
    )


class PortalOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"example": {"url": "https://billing.stripe.com/p/session/test_a1b2"}}
    )

    url: str = Field(description="Where the user manages or cancels the plan")


class WebhookAck(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"example": {"received": True, "outcome": "applied"}}
    )

    received: bool = True
    outcome: str = Field(description="applied | stale | ignored | duplicate")


async def _billing(request: Request, session: DbSession) -> BillingService:
    state = services_of(request)
    return BillingService(
        session, state.settings, state.stripe, state.clock.now(), state.principals
    )


Billing = Annotated[BillingService, Depends(_billing)]


@router.post(
    "/subscribe/pro",
    status_code=status.HTTP_201_CREATED,
    summary="Start a Stripe Checkout session for the Pro plan",
    description=(
        "No body. Answers the Checkout page to open (`checkout_url`, also as `url`); while "
        "that session is open, calling again answers the same one. The user "
        "becomes Pro only when Stripe's signed events reach `POST /webhook/stripe`, usually "
        "seconds after paying; poll `GET /subscription/status` to see it. Without a Stripe key "
        "(and outside production) the page is the built-in mock under `/mock-stripe`."
    ),
    responses={
        **AUTH_ERRORS,
        **error_doc_for(
            ("Already on the Pro plan", AlreadyPro),
            ("the last checkout is paid and its events have not arrived yet", PaymentProcessing),
        ),
        **PROVIDER_ERRORS,
    },
)
async def subscribe_pro(user: CurrentUserRecord, billing: Billing) -> CheckoutOut:
    started = await billing.start_checkout(user)
    return CheckoutOut(checkout_url=started.url, url=started.url, session_id=started.session_id)


@router.post(
    "/webhook/stripe",
    summary="Stripe events (signed with STRIPE_WEBHOOK_SECRET)",
    description=(
        "The raw Stripe event, verified with the `Stripe-Signature` header (HMAC-SHA256, 300 s "
        "tolerance). Each event id is applied once; replays answer 200 with outcome duplicate; "
        "an event of another type, or for no known user, is acknowledged with outcome ignored, "
        "and an older state than the one applied with outcome stale. Without a payment "
        "provider (production without STRIPE_SECRET_KEY) it answers 503 and applies nothing. "
        "Called by Stripe (or the built-in mock), not by clients."
    ),
    responses={
        **error_doc_for(
            ("Bad or missing signature or stale timestamp", InvalidSignature),
            ("a body that is not a Stripe event", InvalidEvent),
        ),
        **PAYMENTS_UNAVAILABLE,
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    },
)
async def stripe_webhook(
    request: Request,
    billing: Billing,
    stripe_signature: Annotated[str | None, Header(alias="Stripe-Signature")] = None,
) -> WebhookAck:
    if billing.gateway is None:
        # No payment provider (production without Stripe): no event can be genuine.
        WEBHOOK_EVENTS.labels("unknown", "payments_unavailable").inc()
        raise PaymentsUnavailable()
    payload = await request.body()
    secret = services_of(request).settings.stripe_webhook_secret.get_secret_value()
    try:
        event = verify(payload, stripe_signature, secret, billing.now)
    except AppError as exc:
        WEBHOOK_EVENTS.labels("unknown", exc.code).inc()
        log.warning("stripe_event_refused", code=exc.code)
        raise
    kind = event.type if event.type in HANDLED_TYPES else "other"
    try:
        outcome = await billing.apply_event(event)
    except Exception:
        WEBHOOK_EVENTS.labels(kind, "error").inc()
        raise
    WEBHOOK_EVENTS.labels(kind, outcome).inc()
    log.info("stripe_event", event_id=event.id, event_type=event.type, outcome=outcome)
    return WebhookAck(outcome=outcome)


@router.get(
    "/subscription/status",
    summary="My plan, its Stripe status, and today's usage",
    description=(
        "`tier` is what the quota uses now; `status` is the subscription's state in the "
        "contract's terms (none, active, trialing, past_due, canceled) and `stripe_status` "
        "Stripe's own. `daily_limit` and `remaining_today` are null when unlimited; "
        "`monthly_tokens` is the month's token budget (as in `GET /user/usage`)."
    ),
    responses=AUTH_ERRORS,
)
async def subscription_status(
    request: Request, user: CurrentUserRecord, session: DbSession
) -> SubscriptionOut:
    state = services_of(request)
    now = state.clock.now()
    tier = tier_of(user, now, state.settings)
    quota = await state.quota.state(session, user.id, tier, now)
    return SubscriptionOut(
        tier=tier,
        **subscription_fields(user.subscription),
        daily_limit=quota.limit,
        used_today=quota.used,
        remaining_today=quota.remaining,
        monthly_tokens=TokenBudgetOut.of(quota.tokens),
    )


@router.post(
    "/subscription/portal",
    summary="A Stripe Billing Portal link to manage or cancel the plan",
    description="No body. Changes made there reach the server as webhook events.",
    responses={
        **AUTH_ERRORS,
        **error_doc_for(("No Stripe customer yet", NoSubscription)),
        **PROVIDER_ERRORS,
    },
)
async def subscription_portal(user: CurrentUserRecord, billing: Billing) -> PortalOut:
    return PortalOut(url=await billing.portal_url(user))


@router.get(
    "/subscribe/success",
    summary="Checkout return page (paid)",
    description="The HTML page Stripe Checkout sends the browser back to after paying.",
    response_class=HTMLResponse,
    responses={200: {"description": "An HTML page"}},
)
async def checkout_success() -> HTMLResponse:
    return page(
        "Payment received",
        "<p>Thank you. Your Pro plan starts as soon as Stripe confirms the payment to the "
        "server (usually within seconds); <code>GET /subscription/status</code> shows it.</p>",
    )


@router.get(
    "/subscribe/cancelled",
    summary="Checkout return page (not paid)",
    description="The HTML page Stripe Checkout sends the browser back to when not paying.",
    response_class=HTMLResponse,
    responses={200: {"description": "An HTML page"}},
)
async def checkout_cancelled() -> HTMLResponse:
    return page(
        "Checkout cancelled", "<p>Nothing was charged. You are still on the Basic plan.</p>"
    )


@router.get(
    "/subscribe/return",
    summary="Billing portal return page",
    description="The HTML page the Stripe Billing Portal sends the browser back to.",
    response_class=HTMLResponse,
    responses={200: {"description": "An HTML page"}},
)
async def portal_return() -> HTMLResponse:
    return page(
        "Back from billing",
        "<p>Changes to your plan show in <code>GET /subscription/status</code> once Stripe has "
        "told the server.</p>",
    )
