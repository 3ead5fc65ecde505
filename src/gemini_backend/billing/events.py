"""Stripe webhook events: verification, parsing, and what each handled type says.

Every handled event is reduced to `SubscriptionFacts` (which subscription, its status if the
event tells it, its period end, cancel_at_period_end); `BillingService.apply` folds the facts
into the user's subscription row so that any arrival order ends in the same state.
Both the current Stripe API shape (period end on subscription items, an invoice's subscription
under `parent.subscription_details`) and the older one are read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gemini_backend.core.errors import AppError

SIGNATURE_TOLERANCE_SECONDS = 300

HANDLED_TYPES = frozenset(
    {
        "checkout.session.completed",
        "customer.subscription.created",
        "customer.subscription.updated",
        "customer.subscription.deleted",
        "invoice.paid",
        "invoice.payment_failed",
    }
)


class InvalidSignature(AppError):
    status_code = 400
    code = "invalid_signature"
    detail = "The Stripe-Signature header does not verify."


class InvalidEvent(AppError):
    status_code = 400
    code = "invalid_payload"
    detail = "The body is not a Stripe event."


@dataclass(frozen=True, slots=True)
class StripeEventIn:
    id: str
    type: str
    created: int
    object: dict[str, Any]


@dataclass(frozen=True, slots=True)
class SubscriptionFacts:
    subscription_id: str | None
    customer_id: str | None
    # Who, when the customer is not known yet: metadata.user_id or client_reference_id.
    user_hint: int | None
    status: str | None = None
    current_period_end: datetime | None = None
    cancel_at_period_end: bool | None = None
    # invoice.payment_failed: past_due, but only for a subscription that was paid up.
    only_if_live: bool = False


def verify(payload: bytes, header: str | None, secret: str, now: datetime) -> StripeEventIn:
    """Check the signature (the SDK's HMAC check) and the timestamp against our clock, in both
    directions: a stale event (replay) and one stamped far in the future are refused."""
    import stripe  # imported at its first use (billing/gateway.py)

    try:
        stripe.WebhookSignature.verify_header(payload, header, secret, tolerance=None)
    except (stripe.SignatureVerificationError, UnicodeDecodeError) as exc:
        raise InvalidSignature() from exc
    assert header is not None  # verify_header refuses a missing header
    stamp = _timestamp(header)
    if abs(now.timestamp() - stamp) > SIGNATURE_TOLERANCE_SECONDS:
        raise InvalidSignature(
            "The Stripe-Signature timestamp is outside the 300 s tolerance (replayed or "
            "clock skew)."
        )
    return parse(payload)


def _timestamp(header: str) -> int:
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        if key == "t":
            try:
                return int(value)
            except ValueError:
                break
    raise InvalidSignature("The Stripe-Signature header has no valid timestamp.")


# The last second a datetime holds (9999-12-31T23:59:59Z); Stripe's times are far below it.
MAX_EPOCH = 253_402_300_799


def parse(payload: bytes) -> StripeEventIn:
    try:
        body = json.loads(payload)
    except ValueError as exc:
        raise InvalidEvent("The body is not valid JSON.") from exc
    if not isinstance(body, dict):
        raise InvalidEvent()
    if b"\\u" in payload and _has_lone_surrogate(body):
        raise InvalidEvent("The body holds a string that is not valid Unicode.")
    event_id, event_type, created = body.get("id"), body.get("type"), body.get("created")
    data = body.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    if (
        not isinstance(event_id, str)
        or not event_id
        or len(event_id) > 255
        or not isinstance(event_type, str)
        or not event_type
        or "\x00" in event_id + event_type  # PostgreSQL's text cannot hold it
        or isinstance(created, bool)
        or not isinstance(created, int)
        or not 0 <= created <= MAX_EPOCH
        or not isinstance(obj, dict)
    ):
        raise InvalidEvent("A Stripe event needs id, type, created and data.object.")
    return StripeEventIn(event_id, event_type[:100], created, obj)


def _has_lone_surrogate(body: dict[str, Any]) -> bool:
    """JSON may escape half of a UTF-16 pair (`"\\ud800"`): no database can store it, and no
    Stripe event holds one."""
    try:
        json.dumps(body, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return True
    return False


def facts_of(event: StripeEventIn) -> SubscriptionFacts | None:
    """What a handled event says about a subscription; None for events we ignore."""
    obj = event.object
    kind = event.type
    if kind == "checkout.session.completed":
        if obj.get("mode") != "subscription":
            return None
        paid = obj.get("payment_status") in {"paid", "no_payment_required"}
        return SubscriptionFacts(
            subscription_id=_id(obj.get("subscription")),
            customer_id=_id(obj.get("customer")),
            user_hint=_user_id(obj.get("client_reference_id")) or _metadata_user(obj),
            status="active" if paid else None,
        )
    if kind.startswith("customer.subscription."):
        if kind not in HANDLED_TYPES:
            return None
        status = "canceled" if kind.endswith(".deleted") else _str(obj.get("status"))
        cancel_at_end = obj.get("cancel_at_period_end")
        return SubscriptionFacts(
            subscription_id=_id(obj.get("id")),
            customer_id=_id(obj.get("customer")),
            user_hint=_metadata_user(obj),
            status=status,
            current_period_end=_subscription_period_end(obj),
            cancel_at_period_end=cancel_at_end if isinstance(cancel_at_end, bool) else None,
        )
    if kind in {"invoice.paid", "invoice.payment_failed"}:
        subscription_id = _invoice_subscription(obj)
        if subscription_id is None:
            return None  # a one-off invoice, not our plan
        paid = kind == "invoice.paid"
        return SubscriptionFacts(
            subscription_id=subscription_id,
            customer_id=_id(obj.get("customer")),
            user_hint=_metadata_user(_subscription_details(obj) or {}),
            status="active" if paid else "past_due",
            current_period_end=_invoice_period_end(obj) if paid else None,
            only_if_live=not paid,
        )
    return None


def _str(value: Any) -> str | None:
    # A string PostgreSQL cannot store is no Stripe value: treated as absent.
    return value if isinstance(value, str) and value and "\x00" not in value else None


def _id(value: Any) -> str | None:
    """An id, or the id of an expanded object."""
    if isinstance(value, dict):
        value = value.get("id")
    return _str(value)


def _user_id(value: Any) -> int | None:
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 19:
        return int(value)
    return None


def _metadata_user(obj: dict[str, Any]) -> int | None:
    metadata = obj.get("metadata")
    return _user_id(metadata.get("user_id")) if isinstance(metadata, dict) else None


def _time(value: Any) -> datetime | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_EPOCH:
        return datetime.fromtimestamp(value, UTC)
    return None


def _latest(values: list[datetime | None]) -> datetime | None:
    present = [value for value in values if value is not None]
    return max(present) if present else None


def _list_data(obj: dict[str, Any], key: str) -> list[dict[str, Any]]:
    container = obj.get(key)
    data = container.get("data") if isinstance(container, dict) else None
    return [item for item in data if isinstance(item, dict)] if isinstance(data, list) else []


def _subscription_period_end(obj: dict[str, Any]) -> datetime | None:
    items = _list_data(obj, "items")
    return _latest(
        [_time(obj.get("current_period_end"))]
        + [_time(item.get("current_period_end")) for item in items]
    )


def _subscription_details(invoice: dict[str, Any]) -> dict[str, Any] | None:
    parent = invoice.get("parent")
    details = parent.get("subscription_details") if isinstance(parent, dict) else None
    return details if isinstance(details, dict) else None


def _invoice_subscription(invoice: dict[str, Any]) -> str | None:
    details = _subscription_details(invoice)
    if details is not None:
        return _id(details.get("subscription"))
    return _id(invoice.get("subscription"))


def _invoice_period_end(invoice: dict[str, Any]) -> datetime | None:
    ends: list[datetime | None] = []
    for line in _list_data(invoice, "lines"):
        period = line.get("period")
        if isinstance(period, dict):
            ends.append(_time(period.get("end")))
    return _latest(ends)
