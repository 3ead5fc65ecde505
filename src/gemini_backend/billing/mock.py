"""The built-in Stripe mock: the slice of Stripe's HTTP API the billing code calls, a checkout
page, a billing portal page, and Stripe-signed event delivery to our own `/webhook/stripe`.

Served under `/mock-stripe` when STRIPE_SECRET_KEY is unset and ENVIRONMENT is not production.
The real `stripe` SDK talks to it over HTTP (its API base is `PUBLIC_BASE_URL/mock-stripe`), and
its events go through the real signature check, so every mode runs the production code path.
Objects live in the cache (Redis when configured, so any API process can serve any page).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import json
import re
import secrets
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

import httpx
import structlog
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from gemini_backend.billing.router import page
from gemini_backend.config import Settings
from gemini_backend.core.cache import Cache

log = structlog.get_logger(__name__)

router = APIRouter(
    prefix="/mock-stripe",
    tags=["Stripe mock"],
    responses={
        400: {"description": "The object is not in a state for this action (an HTML page)"},
        404: {"description": "No such object (an HTML page, or Stripe's error JSON)"},
        502: {"description": "The signed events could not be delivered to /webhook/stripe"},
    },
)
api = APIRouter(prefix="/mock-stripe/v1", include_in_schema=False)

OBJECT_TTL_SECONDS = 90 * 24 * 3600
PERIOD_SECONDS = 30 * 24 * 3600
API_VERSION = "2026-10-28.endive"
DELIVERY_ATTEMPTS = 3


class StripeApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str = "") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


class MockStripe:
    """The mock's objects and events; one per process, state in the shared cache."""

    def __init__(self, cache: Cache, settings: Settings) -> None:
        self.cache = cache
        self.settings = settings
        self.secret = settings.stripe_webhook_secret.get_secret_value()

    # --- storage ---------------------------------------------------------------------------
    async def load(self, object_id: str) -> dict[str, Any]:
        raw = await self.cache.get(f"mock-stripe:{object_id}")
        if raw is None:
            raise StripeApiError(404, f"No such object: '{object_id}'", "id", "resource_missing")
        value: dict[str, Any] = json.loads(raw)
        return value

    async def save(self, obj: dict[str, Any]) -> dict[str, Any]:
        await self.cache.set(
            f"mock-stripe:{obj['id']}", json.dumps(obj).encode(), OBJECT_TTL_SECONDS
        )
        return obj

    # --- events ----------------------------------------------------------------------------
    def sign(self, payload: str, timestamp: int) -> str:
        mac = hmac.new(self.secret.encode(), f"{timestamp}.{payload}".encode(), hashlib.sha256)
        return f"t={timestamp},v1={mac.hexdigest()}"

    async def deliver(self, now: int, *events: tuple[str, dict[str, Any]]) -> None:
        """Send Stripe-signed events to our webhook, as Stripe does (retrying a failed
        delivery a few times). Raises if an event could not be delivered."""
        url = f"{self.settings.base_url}/webhook/stripe"
        async with httpx.AsyncClient(timeout=15.0, trust_env=False) as client:
            for event_type, obj in events:
                event = {
                    "id": _new_id("evt"),
                    "object": "event",
                    "api_version": API_VERSION,
                    "created": now,
                    "type": event_type,
                    "livemode": False,
                    "pending_webhooks": 1,
                    "request": {"id": None, "idempotency_key": None},
                    "data": {"object": _public(obj)},
                }
                payload = json.dumps(event)
                await self._post(client, url, payload, now, event_type)

    async def _post(
        self, client: httpx.AsyncClient, url: str, payload: str, now: int, event_type: str
    ) -> None:
        headers = {"Content-Type": "application/json", "Stripe-Signature": self.sign(payload, now)}
        problem = ""
        for attempt in range(1, DELIVERY_ATTEMPTS + 1):
            try:
                response = await client.post(url, content=payload, headers=headers)
                if response.is_success:
                    return
                problem = f"HTTP {response.status_code}: {response.text[:200]}"
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            log.warning("mock_stripe_delivery_failed", url=url, attempt=attempt, problem=problem)
            if attempt < DELIVERY_ATTEMPTS:
                await asyncio.sleep(0.2 * attempt)
        raise DeliveryFailed(f"{event_type} could not be delivered to {url} ({problem})")

    # --- objects ---------------------------------------------------------------------------
    async def create_customer(self, params: dict[str, Any], now: int) -> dict[str, Any]:
        return await self.save(
            {
                "id": _new_id("cus"),
                "object": "customer",
                "created": now,
                "livemode": False,
                "email": params.get("email"),
                "name": params.get("name"),
                "phone": params.get("phone"),
                "metadata": _dict(params.get("metadata")),
            }
        )

    async def create_checkout_session(self, params: dict[str, Any], now: int) -> dict[str, Any]:
        if params.get("mode") != "subscription":
            raise StripeApiError(400, "The mock supports mode=subscription only.", "mode")
        items = params.get("line_items")
        price = items[0].get("price") if isinstance(items, list) and items else None
        if not isinstance(price, str) or not price:
            raise StripeApiError(400, "Missing required param: line_items[0][price].", "line_items")
        for key in ("success_url", "cancel_url"):
            if not isinstance(params.get(key), str) or not params[key]:
                raise StripeApiError(400, f"Missing required param: {key}.", key)
        customer = params.get("customer")
        if customer is not None:
            await self.load(str(customer))
        session_id = _new_id("cs_test")
        return await self.save(
            {
                "id": session_id,
                "object": "checkout.session",
                "mode": "subscription",
                "status": "open",
                "payment_status": "unpaid",
                "customer": customer,
                "client_reference_id": params.get("client_reference_id"),
                "metadata": _dict(params.get("metadata")),
                "subscription": None,
                "success_url": params["success_url"],
                "cancel_url": params["cancel_url"],
                "url": f"{self.settings.base_url}/mock-stripe/checkout/{session_id}",
                "created": now,
                "expires_at": now + 24 * 3600,
                "livemode": False,
                "_mock": {
                    "price": price,
                    "subscription_metadata": _dict(
                        _dict(params.get("subscription_data")).get("metadata")
                    ),
                },
            }
        )

    async def pay(self, session_id: str, now: int) -> str:
        """Complete an open checkout: a customer (if none), an active subscription, a paid
        invoice, the three events; returns the success URL."""
        session = await self.load(session_id)
        if session.get("object") != "checkout.session":
            raise StripeApiError(404, f"No such checkout session: '{session_id}'")
        if session["status"] != "open":
            raise StripeApiError(400, f"This checkout session is {session['status']}.")
        if session["customer"] is None:
            session["customer"] = (await self.create_customer({}, now))["id"]
        metadata = session["_mock"]["subscription_metadata"]
        subscription_id = _new_id("sub")
        invoice_id = _new_id("in")
        period = {"start": now, "end": now + PERIOD_SECONDS}
        subscription = await self.save(
            {
                "id": subscription_id,
                "object": "subscription",
                "customer": session["customer"],
                "status": "active",
                "cancel_at_period_end": False,
                "canceled_at": None,
                "ended_at": None,
                "created": now,
                "metadata": metadata,
                "latest_invoice": invoice_id,
                "livemode": False,
                "items": {
                    "object": "list",
                    "data": [
                        {
                            "id": _new_id("si"),
                            "object": "subscription_item",
                            "price": {"id": session["_mock"]["price"], "object": "price"},
                            "quantity": 1,
                            "current_period_start": period["start"],
                            "current_period_end": period["end"],
                        }
                    ],
                },
            }
        )
        await self.index_subscription(session["customer"], subscription_id)
        invoice = await self.save(_invoice(invoice_id, subscription, period, "paid", now))
        session.update(status="complete", payment_status="paid", subscription=subscription_id)
        await self.save(session)
        await self.deliver(
            now,
            ("checkout.session.completed", session),
            ("customer.subscription.created", subscription),
            ("invoice.paid", invoice),
        )
        success: str = session["success_url"]
        return success.replace("{CHECKOUT_SESSION_ID}", session_id)

    async def expire_session(self, session_id: str) -> str:
        session = await self.load(session_id)
        if session["status"] == "open":
            session["status"] = "expired"
            await self.save(session)
        cancel: str = session["cancel_url"]
        return cancel

    async def cancel_subscription(self, subscription_id: str, now: int) -> dict[str, Any]:
        subscription = await self._subscription(subscription_id)
        if subscription["status"] != "canceled":
            subscription.update(status="canceled", canceled_at=now, ended_at=now)
            await self.save(subscription)
            await self.deliver(now, ("customer.subscription.deleted", subscription))
        return subscription

    async def update_subscription(
        self, subscription_id: str, params: dict[str, Any], now: int
    ) -> dict[str, Any]:
        subscription = await self._subscription(subscription_id)
        flag = params.get("cancel_at_period_end")
        if flag is not None:
            if subscription["status"] == "canceled":
                raise StripeApiError(400, "A canceled subscription can not be updated.")
            subscription["cancel_at_period_end"] = flag in {"true", True}
            await self.save(subscription)
            await self.deliver(now, ("customer.subscription.updated", subscription))
        return subscription

    async def fail_payment(self, subscription_id: str, now: int) -> dict[str, Any]:
        """A renewal whose card is declined: past_due, invoice.payment_failed."""
        subscription = await self._live_subscription(subscription_id)
        period = _period(subscription)
        invoice = await self.save(_invoice(_new_id("in"), subscription, period, "open", now))
        subscription.update(status="past_due", latest_invoice=invoice["id"])
        await self.save(subscription)
        await self.deliver(
            now,
            ("invoice.payment_failed", invoice),
            ("customer.subscription.updated", subscription),
        )
        return subscription

    async def renew(self, subscription_id: str, now: int) -> dict[str, Any]:
        """A renewal that is paid: the next period, active, invoice.paid."""
        subscription = await self._live_subscription(subscription_id)
        start = max(now, _period(subscription)["end"])
        period = {"start": start, "end": start + PERIOD_SECONDS}
        item = subscription["items"]["data"][0]
        item.update(current_period_start=period["start"], current_period_end=period["end"])
        invoice = await self.save(_invoice(_new_id("in"), subscription, period, "paid", now))
        subscription.update(status="active", latest_invoice=invoice["id"])
        await self.save(subscription)
        await self.deliver(
            now,
            ("invoice.paid", invoice),
            ("customer.subscription.updated", subscription),
        )
        return subscription

    async def create_portal_session(self, params: dict[str, Any], now: int) -> dict[str, Any]:
        customer = params.get("customer")
        if not isinstance(customer, str):
            raise StripeApiError(400, "Missing required param: customer.", "customer")
        await self.load(customer)
        portal_id = _new_id("bps")
        return await self.save(
            {
                "id": portal_id,
                "object": "billing_portal.session",
                "customer": customer,
                "return_url": params.get("return_url"),
                "url": f"{self.settings.base_url}/mock-stripe/portal/{portal_id}",
                "created": now,
                "livemode": False,
            }
        )

    async def subscriptions_of(self, customer_id: str) -> list[dict[str, Any]]:
        index = await self.cache.get(f"mock-stripe:subs-of:{customer_id}")
        found = []
        for subscription_id in json.loads(index) if index else []:
            try:
                found.append(await self.load(subscription_id))
            except StripeApiError:
                continue
        return found

    async def index_subscription(self, customer_id: str, subscription_id: str) -> None:
        key = f"mock-stripe:subs-of:{customer_id}"
        index = await self.cache.get(key)
        ids = json.loads(index) if index else []
        ids.append(subscription_id)
        await self.cache.set(key, json.dumps(ids).encode(), OBJECT_TTL_SECONDS)

    async def _subscription(self, subscription_id: str) -> dict[str, Any]:
        subscription = await self.load(subscription_id)
        if subscription.get("object") != "subscription":
            raise StripeApiError(404, f"No such subscription: '{subscription_id}'", "id")
        return subscription

    async def _live_subscription(self, subscription_id: str) -> dict[str, Any]:
        subscription = await self._subscription(subscription_id)
        if subscription["status"] == "canceled":
            raise StripeApiError(400, "This subscription is canceled.")
        return subscription


class DeliveryFailed(Exception):
    pass


def _invoice(
    invoice_id: str, subscription: dict[str, Any], period: dict[str, int], state: str, now: int
) -> dict[str, Any]:
    return {
        "id": invoice_id,
        "object": "invoice",
        "customer": subscription["customer"],
        "status": state,
        "created": now,
        "livemode": False,
        "parent": {
            "type": "subscription_details",
            "subscription_details": {
                "subscription": subscription["id"],
                "metadata": subscription["metadata"],
            },
        },
        "lines": {
            "object": "list",
            "data": [{"id": _new_id("il"), "object": "line_item", "period": period}],
        },
    }


def _period(subscription: dict[str, Any]) -> dict[str, int]:
    item = subscription["items"]["data"][0]
    return {"start": item["current_period_start"], "end": item["current_period_end"]}


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _public(obj: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in obj.items() if not key.startswith("_")}


def decode_form(body: bytes) -> dict[str, Any]:
    """Stripe's form encoding (`a[b][0][c]=v`) into nested dicts and lists."""
    root: dict[str, Any] = {}
    for key, value in parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True):
        parts = re.findall(r"[^\[\]]+", key)
        if not parts:
            continue
        node = root
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[parts[-1]] = value
    decoded = _lists(root)
    return decoded if isinstance(decoded, dict) else {}


def _lists(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    converted = {key: _lists(value) for key, value in node.items()}
    if converted and all(key.isdigit() for key in converted):
        return [converted[key] for key in sorted(converted, key=int)]
    return converted


# --- the HTTP API the SDK calls ------------------------------------------------------------
def _mock(request: Request) -> MockStripe:
    mock: MockStripe = request.app.state.stripe_mock
    return mock


def _now(request: Request) -> int:
    return int(request.app.state.clock.now().timestamp())


def _stripe_error(exc: StripeApiError) -> JSONResponse:
    error: dict[str, Any] = {"type": "invalid_request_error", "message": exc.message}
    if exc.param:
        error["param"] = exc.param
    if exc.code:
        error["code"] = exc.code
    return JSONResponse({"error": error}, status_code=exc.status)


async def _api_call(request: Request, action: str, object_id: str | None = None) -> Response:
    authorization = request.headers.get("authorization", "")
    if not authorization.startswith("Bearer sk_"):
        return JSONResponse(
            {"error": {"type": "invalid_request_error", "message": "Invalid API Key provided."}},
            status_code=401,
        )
    mock, now = _mock(request), _now(request)
    params = decode_form(await request.body())
    idempotency_key = request.headers.get("idempotency-key")
    replay_key = f"mock-stripe:idem:{idempotency_key}" if idempotency_key else None
    if replay_key is not None:
        cached = await mock.cache.get(replay_key)
        if cached is not None:
            return Response(cached, media_type="application/json")
    try:
        result = await _dispatch(mock, action, object_id, params, now)
    except StripeApiError as exc:
        return _stripe_error(exc)
    except DeliveryFailed as exc:
        return JSONResponse({"error": {"type": "api_error", "message": str(exc)}}, 502)
    body = json.dumps(_public(result)).encode()
    if replay_key is not None:
        await mock.cache.set(replay_key, body, 24 * 3600)
    return Response(body, media_type="application/json")


async def _dispatch(
    mock: MockStripe, action: str, object_id: str | None, params: dict[str, Any], now: int
) -> dict[str, Any]:
    if action == "create_customer":
        return await mock.create_customer(params, now)
    if action == "create_checkout":
        return await mock.create_checkout_session(params, now)
    if action == "create_portal":
        return await mock.create_portal_session(params, now)
    assert object_id is not None
    if action == "retrieve":
        return await mock.load(object_id)
    if action == "update_subscription":
        return await mock.update_subscription(object_id, params, now)
    if action == "cancel_subscription":
        return await mock.cancel_subscription(object_id, now)
    raise StripeApiError(404, "Unrecognized request URL.")


@api.post("/customers")
async def api_create_customer(request: Request) -> Response:
    return await _api_call(request, "create_customer")


@api.get("/customers/{object_id}")
@api.get("/checkout/sessions/{object_id}")
@api.get("/subscriptions/{object_id}")
async def api_retrieve(request: Request, object_id: str) -> Response:
    return await _api_call(request, "retrieve", object_id)


@api.post("/checkout/sessions")
async def api_create_checkout(request: Request) -> Response:
    return await _api_call(request, "create_checkout")


@api.post("/subscriptions/{object_id}")
async def api_update_subscription(request: Request, object_id: str) -> Response:
    return await _api_call(request, "update_subscription", object_id)


@api.delete("/subscriptions/{object_id}")
async def api_cancel_subscription(request: Request, object_id: str) -> Response:
    return await _api_call(request, "cancel_subscription", object_id)


@api.post("/billing_portal/sessions")
async def api_create_portal(request: Request) -> Response:
    return await _api_call(request, "create_portal")


# --- the pages a person clicks ---------------------------------------------------------------
def _page_error(exc: StripeApiError | DeliveryFailed) -> HTMLResponse:
    if isinstance(exc, DeliveryFailed):
        response = page(
            "Webhook delivery failed",
            f"<p>{html.escape(str(exc))}</p><p>The mock delivers events to "
            "<code>PUBLIC_BASE_URL/webhook/stripe</code>; check that PUBLIC_BASE_URL is where "
            "this server is reachable.</p>",
        )
        response.status_code = 502
        return response
    response = page("Stripe mock", f"<p>{html.escape(exc.message)}</p>")
    response.status_code = exc.status
    return response


@router.get(
    "/checkout/{session_id}",
    summary="The mock's checkout page (Pay / Cancel)",
    response_class=HTMLResponse,
)
async def checkout_page(request: Request, session_id: str) -> HTMLResponse:
    try:
        session = await _mock(request).load(session_id)
    except StripeApiError as exc:
        return _page_error(exc)
    if session.get("object") != "checkout.session":
        return _page_error(StripeApiError(404, "No such checkout session."))
    base = f"/mock-stripe/checkout/{html.escape(session_id)}"
    if session["status"] != "open":
        return page("Checkout", f"<p>This checkout session is {session['status']}.</p>")
    return page(
        "Subscribe to Pro (test mode)",
        f"<p>Price <code>{html.escape(session['_mock']['price'])}</code>, billed monthly. "
        "This is the built-in Stripe mock: no card is needed and nothing is charged.</p>"
        f"<form method='post' action='{base}/pay'><button type='submit'>Pay</button></form>"
        f"<form method='post' action='{base}/cancel'><button type='submit'>Cancel</button></form>",
    )


@router.post(
    "/checkout/{session_id}/pay",
    summary="Pay: sends the signed events to /webhook/stripe, then redirects to the success URL",
    status_code=303,
    response_class=RedirectResponse,
)
async def checkout_pay(request: Request, session_id: str) -> Response:
    try:
        target = await _mock(request).pay(session_id, _now(request))
    except (StripeApiError, DeliveryFailed) as exc:
        return _page_error(exc)
    return RedirectResponse(target, status_code=303)


@router.post(
    "/checkout/{session_id}/cancel",
    summary="Cancel: expires the session, redirects to the cancel URL",
    status_code=303,
    response_class=RedirectResponse,
)
async def checkout_cancel(request: Request, session_id: str) -> Response:
    try:
        target = await _mock(request).expire_session(session_id)
    except StripeApiError as exc:
        return _page_error(exc)
    return RedirectResponse(target, status_code=303)


@router.get(
    "/portal/{portal_id}",
    summary="The mock's billing portal page (Cancel plan)",
    response_class=HTMLResponse,
)
async def portal_page(request: Request, portal_id: str) -> HTMLResponse:
    mock = _mock(request)
    try:
        portal = await mock.load(portal_id)
    except StripeApiError as exc:
        return _page_error(exc)
    rows = []
    for sub in await mock.subscriptions_of(portal["customer"]):
        cancel = ""
        if sub["status"] != "canceled":
            cancel = (
                f"<form method='post' action='/mock-stripe/subscriptions/{html.escape(sub['id'])}"
                f"/cancel?redirect={html.escape(portal_id)}'>"
                "<button type='submit'>Cancel plan</button></form>"
            )
        rows.append(f"<li><code>{html.escape(sub['id'])}</code>: {sub['status']}{cancel}</li>")
    listing = "".join(rows) or "<li>No subscriptions.</li>"
    back = html.escape(portal.get("return_url") or "/")
    return page("Your plan (test mode)", f"<ul>{listing}</ul><p><a href='{back}'>Return</a></p>")


SubscriptionAction = Callable[[MockStripe, str, int], Awaitable[dict[str, Any]]]


async def _subscription_action(
    request: Request, subscription_id: str, action: SubscriptionAction, redirect: str | None = None
) -> Response:
    """Run one of the mock's subscription actions; JSON of the subscription, the error page, or
    (from the portal page's form) back to the portal."""
    try:
        subscription = await action(_mock(request), subscription_id, _now(request))
    except (StripeApiError, DeliveryFailed) as exc:
        return _page_error(exc)
    if redirect and re.fullmatch(r"bps_[0-9a-f]+", redirect):
        return RedirectResponse(f"/mock-stripe/portal/{redirect}", status_code=303)
    return JSONResponse(_public(subscription))


@router.post(
    "/subscriptions/{subscription_id}/cancel",
    summary="Cancel a subscription now: sends customer.subscription.deleted",
)
async def cancel_subscription(
    request: Request, subscription_id: str, redirect: str | None = None
) -> Response:
    return await _subscription_action(
        request, subscription_id, MockStripe.cancel_subscription, redirect
    )


@router.post(
    "/subscriptions/{subscription_id}/fail-payment",
    summary="Simulate a declined renewal: past_due, invoice.payment_failed",
)
async def fail_payment(request: Request, subscription_id: str) -> Response:
    return await _subscription_action(request, subscription_id, MockStripe.fail_payment)


@router.post(
    "/subscriptions/{subscription_id}/renew",
    summary="Simulate a paid renewal: the next period, invoice.paid",
)
async def renew(request: Request, subscription_id: str) -> Response:
    return await _subscription_action(request, subscription_id, MockStripe.renew)
