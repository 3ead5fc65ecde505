"""The built-in Stripe mock is not a way around the payment rules: its API takes only the
service's own key, its pages act only with the token of the URL the service handed out, its
test actions only for the subscriber, it redirects only to this server's pages, and a
malformed id is a 4xx."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import stripe

from tests.billing.pages import form_actions
from tests.billing.test_checkout import checkout, new_user, path_of, pay
from tests.billing.test_checkout import status_of as status
from tests.helpers import bearer, sign_in

FOREIGN_KEY = "sk_test_anything"


@pytest.fixture
async def foreign_sdk(app) -> AsyncIterator[stripe.StripeClient]:
    """The real SDK with a key the service did not make."""
    http = stripe.HTTPXClient()
    yield stripe.StripeClient(
        FOREIGN_KEY,
        base_addresses={"api": f"{app.state.services.settings.base_url}/mock-stripe"},
        http_client=http,
        max_network_retries=0,
    )
    await http.close_async()


async def signed_in(live) -> tuple[dict[str, str], int]:
    tokens = await sign_in(live)
    return bearer(tokens), tokens["user"]["id"]


async def pro_user(live) -> tuple[dict[str, str], str]:
    auth = await new_user(live)
    await pay(live, await checkout(live, auth))
    subscription: str = (await status(live, auth))["subscription_id"]
    return auth, subscription


def without_token(url: str) -> str:
    return path_of(url).split("?")[0]


# --- the API -----------------------------------------------------------------------------
async def test_the_api_takes_only_the_services_key(live, foreign_sdk, sdk):
    victim, victim_id = await signed_in(live)
    started = await checkout(live, victim)
    session = await sdk.v1.checkout.sessions.retrieve_async(started["session_id"])
    customer = str(session.customer)
    with pytest.raises(stripe.AuthenticationError):
        await foreign_sdk.v1.customers.retrieve_async(customer)
    with pytest.raises(stripe.AuthenticationError):
        await foreign_sdk.v1.checkout.sessions.retrieve_async(started["session_id"])
    # The service's own idempotency key for the victim's customer replays nothing to others.
    with pytest.raises(stripe.AuthenticationError):
        await foreign_sdk.v1.customers.create_async(
            options={"idempotency_key": f"gemini-backend-customer-{victim_id}"}
        )
    replay = await live.post(
        "/mock-stripe/v1/customers",
        headers={
            "Authorization": f"Bearer {FOREIGN_KEY}",
            "Idempotency-Key": f"gemini-backend-customer-{victim_id}",
        },
    )
    assert replay.status_code == 401
    assert customer not in replay.text
    # Nor can another key start a checkout in someone else's name (client_reference_id).
    with pytest.raises(stripe.AuthenticationError):
        await foreign_sdk.v1.checkout.sessions.create_async(
            params={
                "mode": "subscription",
                "client_reference_id": str(victim_id),
                "line_items": [{"price": "price_pro_monthly", "quantity": 1}],
                "success_url": "http://127.0.0.1/s",
                "cancel_url": "http://127.0.0.1/c",
            }
        )
    for verb, path in [
        ("get", f"/mock-stripe/v1/subscriptions/sub_{'0' * 24}"),
        ("post", "/mock-stripe/v1/billing_portal/sessions"),
        ("delete", f"/mock-stripe/v1/subscriptions/sub_{'0' * 24}"),
        ("get", f"/mock-stripe/v1/checkout/sessions?customer={customer}"),
    ]:
        response = await live.request(
            verb, path, headers={"Authorization": f"Bearer {FOREIGN_KEY}"}
        )
        assert response.status_code == 401, (verb, path)


async def test_an_idempotency_key_replays_only_the_same_request(live, sdk):
    options: Any = {"idempotency_key": "mock-test-key"}
    first = await sdk.v1.customers.create_async(params={"phone": "+15555550100"}, options=options)
    again = await sdk.v1.customers.create_async(params={"phone": "+15555550100"}, options=options)
    assert again.id == first.id
    with pytest.raises(stripe.IdempotencyError):
        await sdk.v1.customers.create_async(params={"phone": "+15555550199"}, options=options)


# --- the pages -----------------------------------------------------------------------------
async def test_checkout_pages_act_only_with_the_urls_token(live):
    auth = await new_user(live)
    started = await checkout(live, auth)
    bare = without_token(started["checkout_url"])
    for token in ["", "?token=", f"?token={'0' * 32}"]:
        assert (await live.get(bare + token)).status_code == 404
        assert (await live.post(f"{bare}/pay{token}")).status_code == 404
        assert (await live.post(f"{bare}/cancel{token}")).status_code == 404
    assert (await status(live, auth))["tier"] == "basic"
    # Another user's token does not open this session either.
    other = await checkout(live, await new_user(live))
    other_token = path_of(other["checkout_url"]).split("?")[1]
    assert (await live.post(f"{bare}/pay?{other_token}")).status_code == 404
    # The session is still open, and its own URL pays it.
    await pay(live, started)
    assert (await status(live, auth))["tier"] == "pro"


async def test_the_portal_acts_only_with_its_token_and_for_its_customer(live):
    owner, subscription = await pro_user(live)
    portal_url = (await live.post("/subscription/portal", headers=owner)).json()["url"]
    bare = without_token(portal_url)
    assert (await live.get(bare)).status_code == 404
    assert (await live.get(f"{bare}?token={'0' * 32}")).status_code == 404
    forged = await live.post(f"{bare}/subscriptions/{subscription}/cancel")
    assert forged.status_code == 404
    # Another customer's portal, with its own valid token, cannot cancel this subscription.
    stranger, _ = await pro_user(live)
    theirs = path_of((await live.post("/subscription/portal", headers=stranger)).json()["url"])
    portal_id, token = without_token(theirs).rsplit("/", 1)[1], theirs.split("?")[1]
    crossed = await live.post(
        f"/mock-stripe/portal/{portal_id}/subscriptions/{subscription}/cancel?{token}"
    )
    assert crossed.status_code == 404
    assert (await status(live, owner))["tier"] == "pro"
    page = await live.get(path_of(portal_url))
    assert page.status_code == 200
    assert (await live.post(form_actions(page.text)["Cancel plan"])).status_code == 303
    assert (await status(live, owner))["tier"] == "basic"


@pytest.mark.parametrize("action", ["cancel", "fail-payment", "renew"])
async def test_subscription_actions_are_for_the_subscriber_only(live, sdk, action):
    owner, subscription = await pro_user(live)
    anonymous = await live.post(f"/mock-stripe/subscriptions/{subscription}/{action}")
    assert anonymous.status_code == 401
    stranger = await new_user(live)
    other = await live.post(f"/mock-stripe/subscriptions/{subscription}/{action}", headers=stranger)
    assert other.status_code == 404
    foreign = {"Authorization": f"Bearer {FOREIGN_KEY}"}
    keyed = await live.post(f"/mock-stripe/subscriptions/{subscription}/{action}", headers=foreign)
    assert keyed.status_code == 401
    after = await status(live, owner)
    assert (after["tier"], after["status"]) == ("pro", "active")
    own = await live.post(f"/mock-stripe/subscriptions/{subscription}/{action}", headers=owner)
    assert own.status_code == 200, own.text
    assert (await sdk.v1.subscriptions.retrieve_async(subscription)).status == own.json()["status"]


# --- redirects -----------------------------------------------------------------------------
OFF_SITE = [
    "https://evil.example/phish",
    "//evil.example/",
    "javascript:alert(document.cookie)",
    "data:text/html,<script>alert(1)</script>",
    "http://127.0.0.1:1@evil.example/",
    "http://evil.example\\@127.0.0.1/",
    " javascript:alert(1)",
    "ftp://127.0.0.1/",
]


@pytest.mark.parametrize("url", OFF_SITE)
async def test_checkout_redirects_stay_on_this_server(app, live, sdk, url):
    base = app.state.services.settings.base_url
    for key in ("success_url", "cancel_url"):
        params: Any = {
            "mode": "subscription",
            "line_items": [{"price": "price_pro_monthly", "quantity": 1}],
            "success_url": f"{base}/subscribe/success",
            "cancel_url": f"{base}/subscribe/cancelled",
        }
        params[key] = url
        with pytest.raises(stripe.InvalidRequestError) as refused:
            await sdk.v1.checkout.sessions.create_async(params=params)
        assert refused.value.http_status == 400
        assert refused.value.param == key


@pytest.mark.parametrize("url", OFF_SITE)
async def test_the_portal_return_link_stays_on_this_server(live, sdk, url):
    customer = await sdk.v1.customers.create_async()
    with pytest.raises(stripe.InvalidRequestError) as refused:
        await sdk.v1.billing_portal.sessions.create_async(
            params={"customer": customer.id, "return_url": url}
        )
    assert refused.value.http_status == 400


async def test_redirects_to_this_servers_pages_work(app, live, sdk):
    base = app.state.services.settings.base_url
    customer = await sdk.v1.customers.create_async()
    portal = await sdk.v1.billing_portal.sessions.create_async(
        params={"customer": customer.id, "return_url": f"{base}/anywhere/here?x=1"}
    )
    page = await live.get(path_of(portal.url))
    assert f"href='{base}/anywhere/here?x=1'" in page.text


# --- malformed ids and params ----------------------------------------------------------------
async def test_malformed_or_unknown_ids_are_404_never_500(live, sdk, service_key):
    auth, subscription = await pro_user(live)
    customer = str((await sdk.v1.subscriptions.retrieve_async(subscription)).customer)
    key = {"Authorization": f"Bearer {service_key}"}
    malformed = [
        f"subs-of:{customer}",  # the mock's own index of the customer's subscriptions
        "idem:gemini-backend-customer-1",
        "cus_",
        "cus_zz",
        "x" * 5000,
        "%00",
        subscription.replace("sub_", "cs_test_"),  # well formed, but no such session
    ]
    for object_id in malformed:
        for path in ["customers", "subscriptions", "checkout/sessions"]:
            response = await live.get(f"/mock-stripe/v1/{path}/{object_id}", headers=key)
            assert response.status_code == 404, (object_id, path, response.text)
            assert response.json()["error"]["code"] == "resource_missing"
        for action in ["cancel", "renew"]:
            response = await live.post(
                f"/mock-stripe/subscriptions/{object_id}/{action}", headers=auth
            )
            assert response.status_code == 404, (object_id, action)
        for page in ["checkout", "portal"]:
            response = await live.get(f"/mock-stripe/{page}/{object_id}?token={'0' * 32}")
            assert response.status_code == 404, (object_id, page)
    # A customer is not a subscription, nor the other way round.
    assert (
        await live.get(f"/mock-stripe/v1/subscriptions/{customer}", headers=key)
    ).status_code == 404
    assert (
        await live.get(f"/mock-stripe/v1/customers/{subscription}", headers=key)
    ).status_code == 404
    assert (await status(live, auth))["subscription_id"] == subscription


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/customers", "metadata=plain"),
        ("/customers", "phone[a]=1"),
        ("/checkout/sessions", "mode=subscription&line_items=x"),
        ("/checkout/sessions", "mode=subscription&line_items[0]=x"),
        ("/checkout/sessions", "mode[a]=subscription"),
        ("/billing_portal/sessions", "customer[a]=1"),
    ],
)
async def test_malformed_params_are_400(live, service_key, path, body):
    key = {"Authorization": f"Bearer {service_key}"}
    response = await live.post(
        f"/mock-stripe/v1{path}",
        content=body,
        headers={**key, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 400, response.text


async def test_a_malformed_update_is_400(live, service_key):
    _auth, subscription = await pro_user(live)
    key = {"Authorization": f"Bearer {service_key}"}
    response = await live.post(
        f"/mock-stripe/v1/subscriptions/{subscription}",
        content="cancel_at_period_end[a]=1",
        headers={**key, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 400, response.text
