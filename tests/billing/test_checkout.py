"""The whole subscription flow over real HTTP: the stripe SDK calls the built-in mock, the
mock's Pay button sends signed events to /webhook/stripe, and the quota follows the tier."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

import pytest
import stripe

from tests.billing.pages import form_actions
from tests.helpers import bearer, sign_in


async def new_user(live) -> dict[str, str]:
    return bearer(await sign_in(live))


async def send(live, auth, room: int):
    return await live.post(f"/chatroom/{room}/message", json={"content": "hi"}, headers=auth)


async def new_room(live, auth) -> int:
    response = await live.post("/chatroom", json={"name": "billing"}, headers=auth)
    room: int = response.json()["id"]
    return room


async def status_of(live, auth) -> dict[str, Any]:
    response = await live.get("/subscription/status", headers=auth)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def checkout(live, auth) -> dict[str, Any]:
    response = await live.post("/subscribe/pro", headers=auth)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def path_of(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


async def checkout_buttons(live, started: dict[str, Any]) -> dict[str, str]:
    page = await live.get(path_of(started["checkout_url"]))
    assert page.status_code == 200, page.text
    actions = form_actions(page.text)
    assert set(actions) == {"Pay", "Cancel"}
    return actions


async def pay(live, started: dict[str, Any]) -> str:
    """Open the checkout URL and press Pay, as a browser does (no Authorization header)."""
    paid = await live.post((await checkout_buttons(live, started))["Pay"])
    assert paid.status_code == 303, paid.text
    location: str = paid.headers["location"]
    return location


async def test_checkout_to_pro_to_a_sixth_message_then_cancel_to_basic(live, live_port):
    auth = await new_user(live)
    room = await new_room(live, auth)
    for _ in range(5):
        assert (await send(live, auth, room)).status_code == 202
    assert (await send(live, auth, room)).status_code == 429

    started = await checkout(live, auth)
    assert started["url"] == started["checkout_url"]
    assert started["checkout_url"].startswith(
        f"http://127.0.0.1:{live_port}/mock-stripe/checkout/{started['session_id']}?token="
    )
    # The success page alone never grants Pro: only the signed events do.
    success = await live.get(f"/subscribe/success?session_id={started['session_id']}")
    assert success.status_code == 200
    assert (await status_of(live, auth))["tier"] == "basic"

    location = await pay(live, started)
    # Back to the web client, which shows the new plan.
    assert location == (
        f"http://127.0.0.1:{live_port}/?checkout=success&session_id={started['session_id']}"
    )
    assert (await live.get(path_of(location))).status_code == 200
    status = await status_of(live, auth)
    assert (status["tier"], status["status"], status["cancel_at_period_end"]) == (
        "pro",
        "active",
        False,
    )
    assert status["subscription_id"].startswith("sub_")
    assert status["current_period_end"] == "2026-12-22T10:00:00Z"
    assert (await live.get("/user/me", headers=auth)).json()["tier"] == "pro"
    sixth = await send(live, auth, room)
    assert sixth.status_code == 202, sixth.text
    assert "X-RateLimit-Remaining" not in sixth.headers  # unlimited

    again = await live.post("/subscribe/pro", headers=auth)
    assert again.status_code == 409
    assert again.json()["code"] == "already_pro"

    # The portal: a page listing the plan with a Cancel button.
    portal = await live.post("/subscription/portal", headers=auth)
    assert portal.status_code == 200, portal.text
    portal_page = await live.get(path_of(portal.json()["url"]))
    assert portal_page.status_code == 200
    assert status["subscription_id"] in portal_page.text
    cancel_action = form_actions(portal_page.text)["Cancel plan"]
    cancelled = await live.post(cancel_action)
    assert cancelled.status_code == 303
    assert path_of(cancelled.headers["location"]) == path_of(portal.json()["url"])

    status = await status_of(live, auth)
    assert (status["tier"], status["status"]) == ("basic", "canceled")
    # The day's usage still counts after the downgrade: 6 sent, limit 5.
    assert (status["daily_limit"], status["used_today"], status["remaining_today"]) == (5, 6, 0)
    refused = await send(live, auth, room)
    assert refused.status_code == 429
    assert refused.json()["code"] == "daily_limit_reached"


async def test_the_customer_is_reused_across_checkouts(live, sdk):
    auth = await new_user(live)
    first = await checkout(live, auth)
    cancelled = await live.post((await checkout_buttons(live, first))["Cancel"])
    assert cancelled.status_code == 303
    second = await checkout(live, auth)
    assert first["session_id"] != second["session_id"]
    # Read back through the SDK, from the mock, over HTTP.
    one = await sdk.v1.checkout.sessions.retrieve_async(first["session_id"])
    two = await sdk.v1.checkout.sessions.retrieve_async(second["session_id"])
    assert one.customer == two.customer
    assert one.customer.startswith("cus_")
    assert one.client_reference_id == str((await live.get("/user/me", headers=auth)).json()["id"])
    assert one.mode == "subscription"
    assert (one.status, two.status) == ("expired", "open")
    customer = await sdk.v1.customers.retrieve_async(one.customer)
    assert customer.metadata["user_id"] == one.client_reference_id


async def test_one_open_checkout_per_user(live, sdk):
    auth = await new_user(live)
    first = await checkout(live, auth)
    again = await checkout(live, auth)
    assert again == first  # the same session id and URL
    # Concurrent first checkouts of another user: one customer, one session.
    other = await new_user(live)
    started = await asyncio.gather(*(checkout(live, other) for _ in range(5)))
    assert len({(one["session_id"], one["checkout_url"]) for one in started}) == 1
    session = await sdk.v1.checkout.sessions.retrieve_async(started[0]["session_id"])
    listed = await sdk.v1.checkout.sessions.list_async(params={"customer": str(session.customer)})
    assert [one.id for one in listed.data] == [started[0]["session_id"]]
    # Paid, the session is done: after a cancellation the next checkout is a new one.
    await pay(live, first)
    subscription = (await status_of(live, auth))["subscription_id"]
    cancelled = await live.post(f"/mock-stripe/subscriptions/{subscription}/cancel", headers=auth)
    assert cancelled.status_code == 200, cancelled.text
    assert (await checkout(live, auth))["session_id"] != first["session_id"]


async def test_cancelling_the_checkout_changes_nothing(live):
    auth = await new_user(live)
    started = await checkout(live, auth)
    buttons = await checkout_buttons(live, started)
    cancelled = await live.post(buttons["Cancel"])
    assert cancelled.status_code == 303
    assert path_of(cancelled.headers["location"]) == "/?checkout=cancelled"
    assert (await live.get("/subscribe/cancelled")).status_code == 200
    assert (await status_of(live, auth))["tier"] == "basic"
    # An expired session cannot be paid.
    refused = await live.post(buttons["Pay"])
    assert refused.status_code == 400
    assert (await status_of(live, auth))["tier"] == "basic"


async def test_a_declined_renewal_then_a_paid_one(live):
    auth = await new_user(live)
    await pay(live, await checkout(live, auth))
    subscription = (await status_of(live, auth))["subscription_id"]
    failed = await live.post(
        f"/mock-stripe/subscriptions/{subscription}/fail-payment", headers=auth
    )
    assert failed.status_code == 200, failed.text
    status = await status_of(live, auth)
    assert (status["tier"], status["status"]) == ("pro", "past_due")  # within the grace period
    renewed = await live.post(f"/mock-stripe/subscriptions/{subscription}/renew", headers=auth)
    assert renewed.status_code == 200, renewed.text
    status = await status_of(live, auth)
    assert (status["tier"], status["status"]) == ("pro", "active")
    assert status["current_period_end"] == "2027-01-21T10:00:00Z"


async def test_cancel_at_period_end_through_the_sdk(live, sdk):
    auth = await new_user(live)
    await pay(live, await checkout(live, auth))
    subscription = (await status_of(live, auth))["subscription_id"]
    await sdk.v1.subscriptions.update_async(subscription, params={"cancel_at_period_end": True})
    status = await status_of(live, auth)
    assert (status["tier"], status["cancel_at_period_end"]) == ("pro", True)
    await sdk.v1.subscriptions.cancel_async(subscription)
    assert (await status_of(live, auth))["tier"] == "basic"


async def test_the_portal_needs_a_customer(live):
    auth = await new_user(live)
    response = await live.post("/subscription/portal", headers=auth)
    assert response.status_code == 409
    assert response.json()["code"] == "no_subscription"


async def test_the_mock_api_wants_a_key_and_known_ids(live, sdk):
    response = await live.post("/mock-stripe/v1/customers", content="phone=1")
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "invalid_request_error"
    with pytest.raises(stripe.InvalidRequestError) as missing:
        await sdk.v1.subscriptions.retrieve_async("sub_nope")
    assert missing.value.http_status == 404
    with pytest.raises(stripe.InvalidRequestError):
        await sdk.v1.checkout.sessions.create_async(params={"mode": "subscription"})


@pytest.mark.parametrize("path", ["/subscribe/pro", "/subscription/portal"])
async def test_billing_routes_need_a_token(live, path):
    response = await live.post(path)
    assert response.status_code == 401


async def test_status_needs_a_token(live):
    assert (await live.get("/subscription/status")).status_code == 401


class TestStripeUnreachable:
    @pytest.fixture
    def settings_overrides(self, live_port):
        # The SDK's API base points at a closed port: every Stripe call fails to connect.
        from tests.processes import free_port

        return {"public_base_url": f"http://127.0.0.1:{free_port()}"}

    async def test_checkout_is_502_and_stores_nothing(self, client):
        auth = bearer(await sign_in(client))
        response = await client.post("/subscribe/pro", headers=auth)
        assert response.status_code == 502
        assert response.json()["code"] == "payment_provider_error"
        status = (await client.get("/subscription/status", headers=auth)).json()
        assert (status["tier"], status["status"]) == ("basic", "none")


class TestProductionWithoutStripe:
    @pytest.fixture
    def settings_overrides(self):
        return {
            "environment": "production",
            "jwt_secret": "production-test-secret-0123456789",
            "otp_response_in_production": True,  # the tests read the code from the response
        }

    async def test_payments_are_unavailable_and_the_mock_is_off(self, client):
        auth = bearer(await sign_in(client))
        response = await client.post("/subscribe/pro", headers=auth)
        assert response.status_code == 503
        assert response.json()["code"] == "payments_unavailable"
        assert (await client.get("/mock-stripe/checkout/cs_test_x")).status_code == 404
        assert (await client.post("/mock-stripe/v1/customers")).status_code == 404


async def test_a_paid_checkout_whose_events_are_late_is_not_sold_twice(live, app, monkeypatch):
    auth = await new_user(live)
    started = await checkout(live, auth)

    async def delayed(*_args: Any) -> None:
        return None  # Stripe has taken the payment; its events are still on their way

    monkeypatch.setattr(app.state.services.stripe_mock, "_post", delayed)
    await pay(live, started)
    assert (await status_of(live, auth))["tier"] == "basic"
    again = await live.post("/subscribe/pro", headers=auth)
    assert again.status_code == 409, again.text
    assert again.json()["code"] == "payment_processing"
