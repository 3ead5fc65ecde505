"""POST /webhook/stripe: signature checks, exactly-once effects, order-independent state."""

from __future__ import annotations

import asyncio
import json
import os
import random
from datetime import timedelta

import httpx
import pytest

from gemini_backend.billing.service import BillingService
from tests.billing.stripe_events import PERIOD, Customer, event, post_event, signature
from tests.helpers import bearer, sign_in


@pytest.fixture
def now(clock) -> int:
    return int(clock.now().timestamp())


async def new_customer(client) -> tuple[Customer, dict[str, str]]:
    tokens = await sign_in(client)
    return Customer(tokens["user"]["id"]), bearer(tokens)


async def status_of(client, auth) -> dict:
    response = await client.get("/subscription/status", headers=auth)
    assert response.status_code == 200, response.text
    return response.json()


async def tier_of(client, auth) -> str:
    me = (await client.get("/user/me", headers=auth)).json()
    status = await status_of(client, auth)
    assert me["tier"] == status["tier"]
    return me["tier"]


async def deliver(client, body, now, outcome="applied"):
    response = await post_event(client, body, now)
    assert response.status_code == 200, response.text
    assert response.json() == {"received": True, "outcome": outcome}
    return response


# --- verification ----------------------------------------------------------------------------
class TestSignature:
    async def test_a_forged_signature_is_refused_and_changes_nothing(self, client, now):
        customer, auth = await new_customer(client)
        body = customer.checkout_completed("sub_forged", now)
        response = await post_event(client, body, now, secret="whsec_attacker")
        assert response.status_code == 400
        assert response.json()["code"] == "invalid_signature"
        assert await tier_of(client, auth) == "basic"
        # The same event, signed properly, is not marked as seen by the forged attempt.
        await deliver(client, body, now)
        assert await tier_of(client, auth) == "pro"

    @pytest.mark.parametrize(
        "header",
        [
            None,
            "",
            "garbage",
            "t=abc,v1=00",
            "v1=deadbeef",
            "t=1800000000",
            "t=1800000000,v0=abc",
        ],
    )
    async def test_missing_or_malformed_signatures(self, client, now, header):
        customer, auth = await new_customer(client)
        headers = {"Content-Type": "application/json"}
        if header is not None:
            headers["Stripe-Signature"] = header
        payload = json.dumps(customer.checkout_completed("sub_x", now))
        response = await client.post("/webhook/stripe", content=payload, headers=headers)
        assert response.status_code == 400
        assert response.json()["code"] == "invalid_signature"
        assert await tier_of(client, auth) == "basic"

    @pytest.mark.parametrize("skew", [-301, 301, -3600, 86400])
    async def test_timestamps_outside_300_seconds_are_refused(self, client, now, skew):
        customer, auth = await new_customer(client)
        response = await post_event(client, customer.checkout_completed("sub_t", now), now + skew)
        assert response.status_code == 400
        assert response.json()["code"] == "invalid_signature"
        assert "tolerance" in response.json()["detail"]
        assert await tier_of(client, auth) == "basic"

    @pytest.mark.parametrize("skew", [-300, -5, 0, 5, 300])
    async def test_timestamps_within_the_tolerance_pass(self, client, now, skew):
        customer, _auth = await new_customer(client)
        await deliver(client, customer.checkout_completed("sub_ok", now), now + skew)

    async def test_a_body_changed_after_signing_is_refused(self, client, now):
        customer, auth = await new_customer(client)
        payload = json.dumps(customer.checkout_completed("sub_x", now))
        header = signature(payload, now)
        tampered = payload.replace('"paid"', '"paid" ')
        response = await client.post(
            "/webhook/stripe", content=tampered, headers={"Stripe-Signature": header}
        )
        assert response.status_code == 400
        assert await tier_of(client, auth) == "basic"

    @pytest.mark.parametrize(
        "payload",
        [
            "not json",
            "[]",
            '{"id": "evt_1", "type": "invoice.paid", "created": 1}',
            '{"id": "evt_1", "type": "invoice.paid", "created": "1", "data": {"object": {}}}',
            '{"id": "", "type": "invoice.paid", "created": 1, "data": {"object": {}}}',
            '{"id": "evt_1", "type": 5, "created": 1, "data": {"object": {}}}',
            '{"id": "evt_1", "type": "x", "created": true, "data": {"object": {}}}',
        ],
    )
    async def test_signed_bodies_that_are_not_events_are_400(self, client, now, payload):
        response = await post_event(client, payload, now)
        assert response.status_code == 400
        assert response.json()["code"] == "invalid_payload"

    @pytest.mark.parametrize(
        ("field", "value", "status"),
        [
            # Values PostgreSQL cannot store or compare were 500s there, and Stripe retries a
            # 5xx for days: a signed body that cannot be an event is 400, and a value that
            # cannot be Stripe's is taken as absent.
            (("id",), "evt_\x00", 400),
            (("type",), "checkout.session.completed\x00", 400),
            (("created",), 2**70, 400),
            (("created",), 253_402_300_800, 400),  # after 9999-12-31
            (("data", "object", "customer"), "cus_\x00", 200),
            (("data", "object", "subscription"), "sub_\x00", 200),
            (("data", "object", "client_reference_id"), "\u00b2", 200),  # a digit, not ASCII
            (("data", "object", "metadata"), {"user_id": "\u00b2"}, 200),
        ],
    )
    async def test_signed_values_out_of_range_are_never_a_5xx(
        self, client, now, field, value, status
    ):
        customer, auth = await new_customer(client)
        body = customer.checkout_completed("sub_range", now)
        target = body
        for key in field[:-1]:
            target = target[key]
        target[field[-1]] = value
        response = await post_event(client, body, now)
        assert response.status_code == status, response.text
        if status == 400:
            assert response.json()["code"] == "invalid_payload"
            assert await tier_of(client, auth) == "basic"

    @pytest.mark.parametrize("period_end", [2**70, 10**12])
    async def test_a_period_end_out_of_range_is_taken_as_absent(self, client, now, period_end):
        customer, auth = await new_customer(client)
        await deliver(client, customer.checkout_completed("sub_period", now), now)
        body = customer.subscription("updated", "sub_period", "active", now + 1, period_end)
        response = await post_event(client, body, now)
        assert response.status_code == 200, response.text
        assert await tier_of(client, auth) == "pro"

    @pytest.mark.parametrize(
        "field", [("id",), ("type",), ("data", "object", "customer"), ("data", "object", "mode")]
    )
    async def test_a_lone_surrogate_is_400_and_applies_nothing(self, client, now, field):
        customer, auth = await new_customer(client)
        body = customer.checkout_completed("sub_surrogate", now)
        whole = json.loads(json.dumps(body))
        target = body
        for key in field[:-1]:
            target = target[key]
        target[field[-1]] = "\ud800"  # half a UTF-16 pair; json.dumps escapes it
        payload = json.dumps(body)
        assert "\\ud800" in payload
        response = await post_event(client, payload, now)
        assert response.status_code == 400, response.text
        assert response.json()["code"] == "invalid_payload"
        assert await tier_of(client, auth) == "basic"
        # Nothing was recorded: the event, whole, still applies.
        await deliver(client, whole, now)
        assert await tier_of(client, auth) == "pro"

    async def test_a_non_utf8_body_is_400(self, client, now):
        response = await client.post(
            "/webhook/stripe",
            content=b"\xff\xfe{}",
            headers={"Stripe-Signature": f"t={now},v1=00"},
        )
        assert response.status_code == 400


# --- each event type -------------------------------------------------------------------------
class TestEventTypes:
    async def test_checkout_completed_paid_grants_pro(self, client, now):
        customer, auth = await new_customer(client)
        await deliver(client, customer.checkout_completed("sub_1", now), now)
        status = await status_of(client, auth)
        assert (status["tier"], status["status"], status["subscription_id"]) == (
            "pro",
            "active",
            "sub_1",
        )
        assert status["daily_limit"] is None
        assert status["remaining_today"] is None

    async def test_checkout_completed_unpaid_does_not(self, client, now):
        customer, auth = await new_customer(client)
        await deliver(client, customer.checkout_completed("sub_1", now, paid=False), now, "stale")
        assert await tier_of(client, auth) == "basic"

    async def test_a_payment_mode_checkout_is_ignored(self, client, now):
        customer, auth = await new_customer(client)
        body = customer.checkout_completed("sub_1", now)
        body["data"]["object"]["mode"] = "payment"
        await deliver(client, body, now, "ignored")
        assert await tier_of(client, auth) == "basic"

    async def test_subscription_created_updated_deleted(self, client, now):
        customer, auth = await new_customer(client)
        end = now + PERIOD
        await deliver(client, customer.subscription("created", "sub_1", "active", now, end), now)
        status = await status_of(client, auth)
        assert status["tier"] == "pro"
        assert status["current_period_end"] == "2026-12-22T10:00:00Z"
        assert status["cancel_at_period_end"] is False
        updated = customer.subscription("updated", "sub_1", "active", now + 10, end, True)
        await deliver(client, updated, now)
        status = await status_of(client, auth)
        assert (status["tier"], status["cancel_at_period_end"]) == ("pro", True)
        deleted = customer.subscription("deleted", "sub_1", "canceled", now + 20, end, True)
        await deliver(client, deleted, now)
        status = await status_of(client, auth)
        assert (status["tier"], status["status"], status["stripe_status"]) == (
            "basic",
            "canceled",
            "canceled",
        )
        assert status["daily_limit"] == 5

    async def test_an_incomplete_subscription_is_basic(self, client, now):
        customer, auth = await new_customer(client)
        body = customer.subscription("created", "sub_1", "incomplete", now, now + PERIOD)
        await deliver(client, body, now)
        status = await status_of(client, auth)
        assert (status["tier"], status["status"], status["stripe_status"]) == (
            "basic",
            "none",
            "incomplete",
        )

    async def test_trialing_is_pro(self, client, now):
        customer, auth = await new_customer(client)
        body = customer.subscription("created", "sub_1", "trialing", now, now + PERIOD)
        await deliver(client, body, now)
        assert await tier_of(client, auth) == "pro"

    async def test_invoice_paid_activates_and_extends_the_period(self, client, now):
        customer, auth = await new_customer(client)
        end = now + PERIOD
        await deliver(client, customer.subscription("created", "sub_1", "active", now, end), now)
        await deliver(client, customer.invoice("paid", "sub_1", now + 60, end + PERIOD), now)
        status = await status_of(client, auth)
        assert status["current_period_end"] == "2027-01-21T10:00:00Z"
        # An older invoice's period never moves the end back.
        await deliver(client, customer.invoice("paid", "sub_1", now + 1, end), now, "stale")
        assert (await status_of(client, auth))["current_period_end"] == "2027-01-21T10:00:00Z"

    async def test_a_one_off_invoice_is_ignored(self, client, now):
        customer, auth = await new_customer(client)
        body = customer.invoice("paid", "sub_1", now, now + PERIOD)
        del body["data"]["object"]["parent"]
        await deliver(client, body, now, "ignored")
        assert await tier_of(client, auth) == "basic"

    async def test_payment_failed_keeps_pro_for_the_grace_period(self, client, clock, now):
        customer, auth = await new_customer(client)
        end = now + PERIOD
        await deliver(client, customer.subscription("created", "sub_1", "active", now, end), now)
        await deliver(client, customer.invoice("payment_failed", "sub_1", now + 5, end), now)
        status = await status_of(client, auth)
        assert (status["tier"], status["status"]) == ("pro", "past_due")
        # Pro until 3 days (PAST_DUE_GRACE_DAYS) after the paid period ended, then Basic.
        number = (await client.get("/user/me", headers=auth)).json()["mobile_number"]
        clock.advance((timedelta(days=30 + 3) - timedelta(seconds=1)).total_seconds())
        auth = bearer(await sign_in(client, number))
        assert await tier_of(client, auth) == "pro"
        clock.advance(2)
        auth = bearer(await sign_in(client, number))
        assert await tier_of(client, auth) == "basic"

    async def test_a_failed_first_payment_never_grants_pro(self, client, now):
        customer, auth = await new_customer(client)
        end = now + PERIOD
        await deliver(
            client, customer.subscription("created", "sub_1", "incomplete", now, end), now
        )
        await deliver(
            client, customer.invoice("payment_failed", "sub_1", now + 5, end), now, "stale"
        )
        assert await tier_of(client, auth) == "basic"

    async def test_unknown_types_are_acknowledged_and_ignored(self, client, now):
        customer, _auth = await new_customer(client)
        body = event("customer.created", {"id": customer.customer, "object": "customer"}, now)
        await deliver(client, body, now, "ignored")
        body = event("customer.subscription.paused", {"id": "sub_1", "status": "paused"}, now)
        await deliver(client, body, now, "ignored")

    async def test_events_for_unknown_users_are_acknowledged(self, client, now):
        stranger = Customer(user_id=987654321)
        await deliver(client, stranger.checkout_completed("sub_1", now), now, "ignored")

    async def test_the_customer_links_events_without_metadata(self, client, now):
        customer, auth = await new_customer(client)
        await deliver(client, customer.checkout_completed("sub_1", now), now)
        body = customer.subscription("deleted", "sub_1", "canceled", now + 10, now + PERIOD)
        body["data"]["object"]["metadata"] = {}
        await deliver(client, body, now)
        assert await tier_of(client, auth) == "basic"


# --- exactly once ----------------------------------------------------------------------------
class TestExactlyOnce:
    async def test_a_replayed_event_is_200_and_changes_nothing(self, client, now):
        customer, auth = await new_customer(client)
        end = now + PERIOD
        created = customer.subscription("created", "sub_1", "active", now, end)
        await deliver(client, created, now)
        deleted = customer.subscription("deleted", "sub_1", "canceled", now + 5, end)
        await deliver(client, deleted, now)
        await deliver(client, created, now + 60, "duplicate")
        assert await tier_of(client, auth) == "basic"

    async def test_ten_concurrent_duplicates_have_one_effect(self, client, now):
        customer, auth = await new_customer(client)
        body = customer.checkout_completed("sub_1", now)
        responses = await asyncio.gather(*(post_event(client, body, now) for _ in range(10)))
        assert [r.status_code for r in responses] == [200] * 10
        outcomes = sorted(r.json()["outcome"] for r in responses)
        assert outcomes == ["applied"] + ["duplicate"] * 9
        assert await tier_of(client, auth) == "pro"

    async def test_our_own_failure_is_5xx_and_the_retry_applies(
        self, app, client, now, monkeypatch
    ):
        customer, auth = await new_customer(client)
        body = customer.checkout_completed("sub_1", now)
        real_fold = BillingService._fold

        async def broken(self, *args, **kwargs):
            raise RuntimeError("database went away")

        monkeypatch.setattr(BillingService, "_fold", broken)
        # What Stripe sees: a 500 answer (the ASGI test transport would re-raise instead).
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as raw:
            response = await post_event(raw, body, now)
        assert response.status_code == 500
        assert await tier_of(client, auth) == "basic"
        monkeypatch.setattr(BillingService, "_fold", real_fold)
        await deliver(client, body, now)  # Stripe's retry: not mistaken for a duplicate
        assert await tier_of(client, auth) == "pro"


# --- several subscriptions --------------------------------------------------------------------
class TestTwoSubscriptions:
    """Two checkouts paid (possible at Stripe: a second one started before the first's events
    arrived): the user stays Pro while any of their subscriptions is live."""

    @pytest.mark.parametrize("cancelled_first", ["sub_a", "sub_b"])
    async def test_cancelling_one_of_two_keeps_pro(self, client, now, cancelled_first):
        customer, auth = await new_customer(client)
        end = now + PERIOD
        await deliver(client, customer.subscription("created", "sub_a", "active", now, end), now)
        await deliver(
            client, customer.subscription("created", "sub_b", "active", now + 5, end + 5), now
        )
        deleted = customer.subscription("deleted", cancelled_first, "canceled", now + 10, end)
        await deliver(client, deleted, now)
        live = "sub_b" if cancelled_first == "sub_a" else "sub_a"
        status = await status_of(client, auth)
        assert (status["tier"], status["status"], status["subscription_id"]) == (
            "pro",
            "active",
            live,
        )
        await deliver(
            client, customer.subscription("deleted", live, "canceled", now + 20, end), now
        )
        status = await status_of(client, auth)
        assert (status["tier"], status["status"]) == ("basic", "canceled")

    async def test_a_past_due_one_does_not_hide_an_active_one(self, client, now):
        customer, auth = await new_customer(client)
        end = now + PERIOD
        await deliver(client, customer.subscription("created", "sub_a", "active", now, end), now)
        await deliver(client, customer.subscription("created", "sub_b", "active", now, end), now)
        await deliver(
            client, customer.subscription("updated", "sub_b", "past_due", now + 5, end), now
        )
        status = await status_of(client, auth)
        assert (status["tier"], status["status"], status["subscription_id"]) == (
            "pro",
            "active",
            "sub_a",
        )

    async def test_another_users_subscription_id_changes_nothing(self, client, now):
        owner, owner_auth = await new_customer(client)
        other, other_auth = await new_customer(client)
        end = now + PERIOD
        await deliver(client, owner.subscription("created", "sub_mine", "active", now, end), now)
        # The other customer's events never take over or end the owner's subscription.
        body = other.subscription("deleted", "sub_mine", "canceled", now + 10, end)
        await deliver(client, body, now, "ignored")
        assert await tier_of(client, owner_auth) == "pro"
        assert await tier_of(client, other_auth) == "basic"


# --- any order -------------------------------------------------------------------------------
def lifecycle(customer: Customer, now: int) -> tuple[list[dict], str, str]:
    """Subscribe, a failed renewal, a paid retry, then cancellation; the final tier/status."""
    end = now + PERIOD
    sub = f"sub_{customer.customer}"
    events = [
        customer.checkout_completed(sub, now),
        customer.subscription("created", sub, "active", now, end),
        customer.invoice("paid", sub, now, end),
        customer.invoice("payment_failed", sub, now + 100, end),
        customer.subscription("updated", sub, "past_due", now + 100, end),
        customer.invoice("paid", sub, now + 200, end + PERIOD),
        customer.subscription("updated", sub, "active", now + 200, end + PERIOD),
        customer.subscription("updated", sub, "active", now + 300, end + PERIOD, True),
        customer.subscription("deleted", sub, "canceled", now + 400, end + PERIOD, True),
    ]
    return events, "basic", "canceled"


def renewal(customer: Customer, now: int) -> tuple[list[dict], str, str]:
    """Subscribe, a failed renewal, a paid retry: ends active and Pro."""
    events, _, _ = lifecycle(customer, now)
    return events[:7], "pro", "active"


def resubscribe(customer: Customer, now: int) -> tuple[list[dict], str, str]:
    """Cancel one subscription and start another: the new one wins whatever the order."""
    end = now + PERIOD
    sub, sub_2 = f"sub_{customer.customer}", f"sub2_{customer.customer}"
    events = [
        customer.checkout_completed(sub, now),
        customer.subscription("created", sub, "active", now, end),
        customer.subscription("deleted", sub, "canceled", now + 100, end),
        customer.checkout_completed(sub_2, now + 200),
        customer.subscription("created", sub_2, "active", now + 200, end + 200),
        customer.invoice("paid", sub_2, now + 200, end + 200),
    ]
    return events, "pro", "active"


def two_live(customer: Customer, now: int) -> tuple[list[dict], str, str]:
    """Two subscriptions paid, the later one cancelled: the first still bills, so Pro."""
    end = now + PERIOD
    sub, sub_2 = f"sub_{customer.customer}", f"sub2_{customer.customer}"
    events = [
        customer.checkout_completed(sub, now),
        customer.subscription("created", sub, "active", now, end),
        customer.invoice("paid", sub, now, end),
        customer.checkout_completed(sub_2, now + 50),
        customer.subscription("created", sub_2, "active", now + 50, end + 50),
        customer.invoice("paid", sub_2, now + 50, end + 50),
        customer.subscription("deleted", sub_2, "canceled", now + 100, end + 50),
    ]
    return events, "pro", "active"


def two_cancelled(customer: Customer, now: int) -> tuple[list[dict], str, str]:
    """Both of two subscriptions cancelled: Basic."""
    events, _, _ = two_live(customer, now)
    sub = f"sub_{customer.customer}"
    events.append(customer.subscription("deleted", sub, "canceled", now + 200, now + PERIOD))
    return events, "basic", "canceled"


# Shuffled deliveries per scenario; `make soak` (GB_SOAK=1) runs 100 of each.
SHUFFLES = 100 if os.environ.get("GB_SOAK") else 10


@pytest.mark.parametrize("scenario", [lifecycle, renewal, resubscribe, two_live, two_cancelled])
async def test_shuffled_orders_and_duplicates_end_in_the_right_state(client, now, scenario):
    rng = random.Random(scenario.__name__)
    for trial in range(SHUFFLES):
        customer, auth = await new_customer(client)
        events, tier, status = scenario(customer, now)
        deliveries = events + rng.sample(events, k=3)  # some delivered twice
        rng.shuffle(deliveries)
        for body in deliveries:
            response = await post_event(client, body, now)
            assert response.status_code == 200, response.text
        result = await status_of(client, auth)
        assert (result["tier"], result["status"]) == (tier, status), (trial, deliveries)


# --- no payment provider -----------------------------------------------------------------------
class TestProductionWithoutStripe:
    """Production without STRIPE_SECRET_KEY (what compose.yaml runs by default): the webhook
    secret is the public default, so a "signed" event proves nothing and is never applied."""

    @pytest.fixture
    def settings_overrides(self):
        return {
            "environment": "production",
            "jwt_secret": "production-test-secret-0123456789",
            "otp_response_in_production": True,
        }

    @pytest.mark.parametrize("kind", ["upgrade", "downgrade"])
    async def test_events_signed_with_the_public_secret_are_503(self, client, now, kind):
        customer, auth = await new_customer(client)
        if kind == "upgrade":
            body = customer.checkout_completed("sub_forged", now)
        else:
            body = customer.subscription("deleted", "sub_forged", "canceled", now, now + PERIOD)
        response = await post_event(client, body, now)
        assert response.status_code == 503, response.text
        assert response.json()["code"] == "payments_unavailable"
        assert await tier_of(client, auth) == "basic"
        status = await status_of(client, auth)
        assert (status["status"], status["subscription_id"]) == ("none", None)
