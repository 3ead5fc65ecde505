"""Stripe events as Stripe sends them (API version 2026-10-28), signed like Stripe signs them.
Written out by hand, independently of the built-in mock, so the webhook is checked against
the wire format and not against our own generator."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
from typing import Any

import httpx

SECRET = "whsec_dev_insecure_local_mock_secret"
PERIOD = 30 * 24 * 3600
_ids = itertools.count(1)


def signature(payload: str, timestamp: int, secret: str = SECRET) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.{payload}".encode(), hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def event(
    kind: str, obj: dict[str, Any], created: int, event_id: str | None = None
) -> dict[str, Any]:
    return {
        "id": event_id or f"evt_test_{next(_ids)}",
        "object": "event",
        "api_version": "2026-10-28.endive",
        "created": created,
        "type": kind,
        "livemode": False,
        "data": {"object": obj},
    }


async def post_event(
    client: httpx.AsyncClient,
    body: dict[str, Any] | str,
    timestamp: int,
    secret: str = SECRET,
) -> httpx.Response:
    payload = body if isinstance(body, str) else json.dumps(body)
    return await client.post(
        "/webhook/stripe",
        content=payload,
        headers={
            "Content-Type": "application/json",
            "Stripe-Signature": signature(payload, timestamp, secret),
        },
    )


class Customer:
    """One user's Stripe objects, and the events about them."""

    def __init__(self, user_id: int, customer: str | None = None) -> None:
        self.user_id = user_id
        self.customer = customer or f"cus_test_{next(_ids)}"
        self.metadata = {"user_id": str(user_id)}

    def checkout_completed(self, sub: str, created: int, paid: bool = True) -> dict[str, Any]:
        return event(
            "checkout.session.completed",
            {
                "id": f"cs_test_{next(_ids)}",
                "object": "checkout.session",
                "mode": "subscription",
                "status": "complete",
                "payment_status": "paid" if paid else "unpaid",
                "customer": self.customer,
                "client_reference_id": str(self.user_id),
                "metadata": self.metadata,
                "subscription": sub,
            },
            created,
        )

    def subscription(
        self,
        kind: str,
        sub: str,
        status: str,
        created: int,
        period_end: int,
        cancel_at_period_end: bool = False,
    ) -> dict[str, Any]:
        return event(
            f"customer.subscription.{kind}",
            {
                "id": sub,
                "object": "subscription",
                "customer": self.customer,
                "status": status,
                "cancel_at_period_end": cancel_at_period_end,
                "metadata": self.metadata,
                "items": {
                    "object": "list",
                    "data": [
                        {
                            "id": f"si_{next(_ids)}",
                            "object": "subscription_item",
                            "current_period_start": period_end - PERIOD,
                            "current_period_end": period_end,
                        }
                    ],
                },
            },
            created,
        )

    def invoice(self, kind: str, sub: str, created: int, period_end: int) -> dict[str, Any]:
        return event(
            f"invoice.{kind}",
            {
                "id": f"in_{next(_ids)}",
                "object": "invoice",
                "customer": self.customer,
                "status": "paid" if kind == "paid" else "open",
                "parent": {
                    "type": "subscription_details",
                    "subscription_details": {"subscription": sub, "metadata": self.metadata},
                },
                "lines": {
                    "object": "list",
                    "data": [
                        {
                            "object": "line_item",
                            "period": {"start": period_end - PERIOD, "end": period_end},
                        }
                    ],
                },
            },
            created,
        )
