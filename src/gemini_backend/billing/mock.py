"""The built-in Stripe mock: the slice of Stripe's HTTP API the billing code calls, a checkout
page, a billing portal page, and Stripe-signed event delivery to our own `/webhook/stripe`.

Served under `/mock-stripe` when STRIPE_SECRET_KEY is unset and ENVIRONMENT is not production.
The real `stripe` SDK talks to it over HTTP (its API base is `PUBLIC_BASE_URL/mock-stripe`), and
its events go through the real signature check, so every mode runs the production code path.
Objects live in the cache (Redis when configured, so any API process can serve any page).

Who may do what: the API takes only the service's own key (`gateway.mock_api_key`), and its
objects and idempotency keys live under a digest of that key. The pages a browser opens carry
an HMAC token of the object in their URL (the service hands out those URLs), and a
subscription's test actions need the key or the signed-in owner's access token. Redirects go
only to http(s) URLs under PUBLIC_BASE_URL or to the configured return URLs.
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
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from gemini_backend.billing.gateway import mock_api_key
from gemini_backend.billing.pages import page
from gemini_backend.config import Settings
from gemini_backend.core.cache import Cache
from gemini_backend.core.errors import AppError

if TYPE_CHECKING:  # the root builds the mock
    import httpx

    from gemini_backend.services import Services

log = structlog.get_logger(__name__)

router = APIRouter(
    prefix="/mock-stripe",
    tags=["Stripe mock"],
    responses={
        400: {"description": "The object is not in a state for this action (an HTML page)"},
        401: {"description": "A subscription action without the subscriber's access token"},
        404: {"description": "No such object (an HTML page, or Stripe's error JSON)"},
        502: {"description": "The signed events could not be delivered to /webhook/stripe"},
    },
)
api = APIRouter(prefix="/mock-stripe/v1", include_in_schema=False)

OBJECT_TTL_SECONDS = 90 * 24 * 3600
PERIOD_SECONDS = 30 * 24 * 3600
API_VERSION = "2026-10-28.endive"
DELIVERY_ATTEMPTS = 3
IDEMPOTENCY_TTL_SECONDS = 24 * 3600
# A Pay that is under way (the events are being delivered) blocks a second one this long.
PAYING_SECONDS = 120
MAX_LIST_LIMIT = 100

# The id prefix of each kind of object; ids are the prefix and 24 hex digits.
ID_PREFIXES = {
    "customer": "cus",
    "checkout.session": "cs_test",
    "subscription": "sub",
    "invoice": "in",
    "billing_portal.session": "bps",
}


def _services(request: Request) -> Services:
    """services.services_of (not imported: the root imports this module)."""
    services: Services = request.app.state.services
    return services


class StripeApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str = "",
        kind: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.kind = kind


def _missing(kind: str, object_id: str) -> StripeApiError:
    return StripeApiError(404, f"No such {kind}: '{object_id[:100]}'", "id", "resource_missing")


class MockStripe:
    """The mock's objects and events; one per process, state in the shared cache."""

    def __init__(self, cache: Cache, settings: Settings) -> None:
        self.cache = cache
        self.settings = settings
        self.secret = settings.stripe_webhook_secret.get_secret_value()
        self.api_key = mock_api_key(settings)
        self._scope = "mock-stripe:" + hashlib.sha256(self.api_key.encode()).hexdigest()[:16]
        self._page_key = hmac.new(self.api_key.encode(), b"mock-stripe-pages", hashlib.sha256)

    # --- who may -----------------------------------------------------------------------------
    def accepts(self, authorization: str) -> bool:
        scheme, _, key = authorization.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            key.strip().encode(), self.api_key.encode()
        )

    def token(self, object_id: str) -> str:
        """The token of a page's URL: only the service, which holds the key, can make it."""
        mac = self._page_key.copy()
        mac.update(object_id.encode())
        return mac.hexdigest()[:32]

    def token_ok(self, object_id: str, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(
            token.encode(), self.token(object_id).encode()
        )

    def page_url(self, path: str, object_id: str) -> str:
        return (
            f"{self.settings.base_url}/mock-stripe/{path}/{object_id}?token={self.token(object_id)}"
        )

    def allowed_target(self, url: str) -> bool:
        """An http(s) URL under PUBLIC_BASE_URL, or one of the configured return pages."""
        if any(ch <= " " or ch == "\\" for ch in url):
            return False
        try:
            parts = urlsplit(url)
            port = parts.port  # raises on a malformed one
        except ValueError:
            return False
        if parts.scheme not in {"http", "https"} or not parts.hostname or parts.username:
            return False
        origin = (parts.scheme, parts.hostname, port)
        base = urlsplit(self.settings.base_url)
        base_path = base.path.rstrip("/") + "/"
        if origin == (base.scheme, base.hostname, base.port) and (parts.path + "/").startswith(
            base_path
        ):
            return True
        settings = self.settings
        for configured in (
            settings.success_url,
            settings.cancel_url,
            settings.portal_return_target,
        ):
            known = urlsplit(configured)
            if (*origin, parts.path) == (known.scheme, known.hostname, known.port, known.path):
                return True
        return False

    def _target(self, params: dict[str, Any], key: str, required: bool = True) -> str | None:
        value = _text(params, key, required)
        if value is not None and not self.allowed_target(value):
            raise StripeApiError(
                400, f"{key} must be an http(s) URL on this server or a configured page.", key
            )
        return value

    # --- storage ---------------------------------------------------------------------------
    def _new_id(self, kind: str, seed: str | None = None) -> str:
        """A random id; under an idempotency key the same id every time, so two concurrent
        requests with one key create one object."""
        if seed is None:
            return f"{ID_PREFIXES[kind]}_{secrets.token_hex(12)}"
        return f"{ID_PREFIXES[kind]}_{self.token(f'id:{kind}:{seed}')[:24]}"

    async def load(self, kind: str, object_id: str) -> dict[str, Any]:
        if not re.fullmatch(rf"{ID_PREFIXES[kind]}_[0-9a-f]{{24}}", object_id):
            raise _missing(kind, object_id)
        raw = await self.cache.get(f"{self._scope}:obj:{object_id}")
        value = json.loads(raw) if raw is not None else None
        if not isinstance(value, dict) or value.get("object") != kind:
            raise _missing(kind, object_id)
        return value

    async def _existing(self, kind: str, object_id: str) -> dict[str, Any] | None:
        try:
            return await self.load(kind, object_id)
        except StripeApiError:
            return None

    async def save(self, obj: dict[str, Any]) -> dict[str, Any]:
        await self.cache.set(
            f"{self._scope}:obj:{obj['id']}", json.dumps(obj).encode(), OBJECT_TTL_SECONDS
        )
        return obj

    async def _index(self, name: str) -> list[str]:
        raw = await self.cache.get(f"{self._scope}:{name}")
        ids = json.loads(raw) if raw else []
        return [item for item in ids if isinstance(item, str)] if isinstance(ids, list) else []

    async def _add_to_index(self, name: str, object_id: str) -> None:
        ids = await self._index(name)
        if object_id not in ids:
            ids.append(object_id)
            await self.cache.set(
                f"{self._scope}:{name}", json.dumps(ids).encode(), OBJECT_TTL_SECONDS
            )

    async def idempotent_replay(self, key: str, fingerprint: str) -> bytes | None:
        """The answer already given for this Idempotency-Key; the key reused for another
        request is an error, as at Stripe."""
        raw = await self.cache.get(self._idempotency_key(key))
        if raw is None:
            return None
        stored = json.loads(raw)
        if stored.get("fingerprint") != fingerprint:
            raise StripeApiError(
                400,
                "Keys for idempotent requests can only be used with the same parameters "
                "they were first used with.",
                kind="idempotency_error",
            )
        body: str = stored["body"]
        return body.encode()

    async def remember(self, key: str, fingerprint: str, body: bytes) -> None:
        value = json.dumps({"fingerprint": fingerprint, "body": body.decode()}).encode()
        await self.cache.set(self._idempotency_key(key), value, IDEMPOTENCY_TTL_SECONDS)

    def _idempotency_key(self, key: str) -> str:
        return f"{self._scope}:idem:{hashlib.sha256(key.encode()).hexdigest()}"

    # --- events ----------------------------------------------------------------------------
    def sign(self, payload: str, timestamp: int) -> str:
        mac = hmac.new(self.secret.encode(), f"{timestamp}.{payload}".encode(), hashlib.sha256)
        return f"t={timestamp},v1={mac.hexdigest()}"

    async def deliver(self, now: int, *events: tuple[str, dict[str, Any]]) -> None:
        """Send Stripe-signed events to our webhook, as Stripe does (retrying a failed
        delivery a few times). Raises if an event could not be delivered."""
        import httpx  # here, not at start: with its CLI's click, 0.1-0.3 s of a cold start

        url = f"{self.settings.base_url}/webhook/stripe"
        async with httpx.AsyncClient(timeout=15.0, trust_env=False) as client:
            for event_type, obj in events:
                event = {
                    "id": f"evt_{secrets.token_hex(12)}",
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
        import httpx

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
    async def create_customer(
        self, params: dict[str, Any], now: int, seed: str | None = None
    ) -> dict[str, Any]:
        customer_id = self._new_id("customer", seed)
        existing = await self._existing("customer", customer_id)
        if existing is not None:
            return existing
        return await self.save(
            {
                "id": customer_id,
                "object": "customer",
                "created": now,
                "livemode": False,
                "email": _text(params, "email", False),
                "name": _text(params, "name", False),
                "phone": _text(params, "phone", False),
                "metadata": _metadata(params),
            }
        )

    async def create_checkout_session(
        self, params: dict[str, Any], now: int, seed: str | None = None
    ) -> dict[str, Any]:
        if params.get("mode") != "subscription":
            raise StripeApiError(400, "The mock supports mode=subscription only.", "mode")
        items = params.get("line_items")
        first = items[0] if isinstance(items, list) and items else None
        price = first.get("price") if isinstance(first, dict) else None
        if not isinstance(price, str) or not price:
            raise StripeApiError(400, "Missing required param: line_items[0][price].", "line_items")
        success_url = self._target(params, "success_url")
        cancel_url = self._target(params, "cancel_url")
        customer = _text(params, "customer", False)
        if customer is not None:
            await self.load("customer", customer)
        session_id = self._new_id("checkout.session", seed)
        existing = await self._existing("checkout.session", session_id)
        if existing is not None:
            return existing
        subscription_data = params.get("subscription_data")
        session = await self.save(
            {
                "id": session_id,
                "object": "checkout.session",
                "mode": "subscription",
                "status": "open",
                "payment_status": "unpaid",
                "customer": customer,
                "client_reference_id": _text(params, "client_reference_id", False),
                "metadata": _metadata(params),
                "subscription": None,
                "success_url": success_url,
                "cancel_url": cancel_url,
                "url": self.page_url("checkout", session_id),
                "created": now,
                "expires_at": now + 24 * 3600,
                "livemode": False,
                "_mock": {
                    "price": price,
                    "subscription_metadata": _metadata(_dict(subscription_data)),
                },
            }
        )
        if customer is not None:
            await self._add_to_index(f"sessions-of:{customer}", session_id)
        return session

    async def list_checkout_sessions(self, params: dict[str, Any]) -> dict[str, Any]:
        customer = _text(params, "customer", True)
        assert customer is not None
        wanted = _text(params, "status", False)
        limit = _text(params, "limit", False) or "10"
        if not limit.isdigit() or not 1 <= int(limit) <= MAX_LIST_LIMIT:
            raise StripeApiError(400, "limit must be between 1 and 100.", "limit")
        sessions = []
        for session_id in reversed(await self._index(f"sessions-of:{customer}")):
            session = await self._existing("checkout.session", session_id)
            if session is not None and wanted in (None, session["status"]):
                sessions.append(session)
        shown = sessions[: int(limit)]
        return {
            "object": "list",
            "url": "/v1/checkout/sessions",
            "has_more": len(sessions) > len(shown),
            "data": [_public(session) for session in shown],
        }

    async def checkout_session(self, session_id: str, token: str | None) -> dict[str, Any]:
        """The session behind a checkout page's URL (its token), for the page's buttons."""
        if not self.token_ok(session_id, token):
            raise _missing("checkout.session", session_id)
        return await self.load("checkout.session", session_id)

    async def pay(self, session_id: str, token: str | None, now: int) -> str:
        """Complete an open checkout: a customer (if none), an active subscription, a paid
        invoice, the three events; returns the success URL."""
        session = await self.checkout_session(session_id, token)
        if session["status"] != "open":
            raise StripeApiError(400, f"This checkout session is {session['status']}.")
        if await self.cache.incr(f"{self._scope}:paying:{session_id}", PAYING_SECONDS) > 1:
            raise StripeApiError(400, "This checkout session is being paid already.")
        if session["customer"] is None:
            session["customer"] = (await self.create_customer({}, now))["id"]
        metadata = session["_mock"]["subscription_metadata"]
        subscription_id = self._new_id("subscription")
        invoice_id = self._new_id("invoice")
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
                            "id": f"si_{secrets.token_hex(12)}",
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
        await self._add_to_index(f"subs-of:{session['customer']}", subscription_id)
        invoice = await self.save(self._invoice(invoice_id, subscription, period, "paid", now))
        session.update(status="complete", payment_status="paid", subscription=subscription_id)
        await self.save(session)
        await self.deliver(
            now,
            ("checkout.session.completed", session),
            ("customer.subscription.created", subscription),
            ("invoice.paid", invoice),
        )
        return self._redirect(
            str(session["success_url"]).replace("{CHECKOUT_SESSION_ID}", session_id)
        )

    async def expire_session(self, session_id: str, token: str | None) -> str:
        session = await self.checkout_session(session_id, token)
        if session["status"] == "open":
            session["status"] = "expired"
            await self.save(session)
        return self._redirect(str(session["cancel_url"]))

    def _redirect(self, url: str) -> str:
        # Checked when the session was made, and again here: never a redirect off this server.
        return url if self.allowed_target(url) else f"{self.settings.base_url}/"

    async def cancel_subscription(self, subscription_id: str, now: int) -> dict[str, Any]:
        subscription = await self.load("subscription", subscription_id)
        if subscription["status"] != "canceled":
            subscription.update(status="canceled", canceled_at=now, ended_at=now)
            await self.save(subscription)
            await self.deliver(now, ("customer.subscription.deleted", subscription))
        return subscription

    async def update_subscription(
        self, subscription_id: str, params: dict[str, Any], now: int
    ) -> dict[str, Any]:
        subscription = await self.load("subscription", subscription_id)
        flag = _text(params, "cancel_at_period_end", False)
        if flag is not None:
            if flag not in {"true", "false"}:
                raise StripeApiError(
                    400, "cancel_at_period_end must be true or false.", "cancel_at_period_end"
                )
            if subscription["status"] == "canceled":
                raise StripeApiError(400, "A canceled subscription can not be updated.")
            subscription["cancel_at_period_end"] = flag == "true"
            await self.save(subscription)
            await self.deliver(now, ("customer.subscription.updated", subscription))
        return subscription

    async def fail_payment(self, subscription_id: str, now: int) -> dict[str, Any]:
        """A renewal whose card is declined: past_due, invoice.payment_failed."""
        subscription = await self._live_subscription(subscription_id)
        period = _period(subscription)
        invoice = await self.save(
            self._invoice(self._new_id("invoice"), subscription, period, "open", now)
        )
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
        invoice = await self.save(
            self._invoice(self._new_id("invoice"), subscription, period, "paid", now)
        )
        subscription.update(status="active", latest_invoice=invoice["id"])
        await self.save(subscription)
        await self.deliver(
            now,
            ("invoice.paid", invoice),
            ("customer.subscription.updated", subscription),
        )
        return subscription

    async def create_portal_session(self, params: dict[str, Any], now: int) -> dict[str, Any]:
        customer = _text(params, "customer", True)
        assert customer is not None
        await self.load("customer", customer)
        return_url = self._target(params, "return_url", required=False)
        portal_id = self._new_id("billing_portal.session")
        return await self.save(
            {
                "id": portal_id,
                "object": "billing_portal.session",
                "customer": customer,
                "return_url": return_url,
                "url": self.page_url("portal", portal_id),
                "created": now,
                "livemode": False,
            }
        )

    async def portal_session(self, portal_id: str, token: str | None) -> dict[str, Any]:
        if not self.token_ok(portal_id, token):
            raise _missing("billing_portal.session", portal_id)
        return await self.load("billing_portal.session", portal_id)

    async def subscriptions_of(self, customer_id: str) -> list[dict[str, Any]]:
        found = []
        for subscription_id in await self._index(f"subs-of:{customer_id}"):
            subscription = await self._existing("subscription", subscription_id)
            if subscription is not None:
                found.append(subscription)
        return found

    async def _live_subscription(self, subscription_id: str) -> dict[str, Any]:
        subscription = await self.load("subscription", subscription_id)
        if subscription["status"] == "canceled":
            raise StripeApiError(400, "This subscription is canceled.")
        return subscription

    def _invoice(
        self,
        invoice_id: str,
        subscription: dict[str, Any],
        period: dict[str, int],
        state: str,
        now: int,
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
                "data": [
                    {"id": f"il_{secrets.token_hex(12)}", "object": "line_item", "period": period}
                ],
            },
        }


class DeliveryFailed(Exception):
    pass


def _period(subscription: dict[str, Any]) -> dict[str, int]:
    item = subscription["items"]["data"][0]
    return {"start": item["current_period_start"], "end": item["current_period_end"]}


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(params: dict[str, Any], key: str, required: bool) -> str | None:
    value = params.get(key)
    if value is None or value == "":
        if required:
            raise StripeApiError(400, f"Missing required param: {key}.", key)
        return None
    if not isinstance(value, str):
        raise StripeApiError(400, f"Invalid string: {key}.", key)
    return value


def _metadata(params: dict[str, Any]) -> dict[str, str]:
    metadata = params.get("metadata")
    if metadata is None or metadata == "":
        return {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise StripeApiError(400, "Invalid metadata: a hash of strings.", "metadata")
    return metadata


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
    mock = _services(request).stripe_mock
    assert mock is not None  # its routes are served only with the mock (main.py)
    return mock


def _now(request: Request) -> int:
    return int(_services(request).clock.now().timestamp())


def _stripe_error(exc: StripeApiError) -> JSONResponse:
    error: dict[str, Any] = {"type": exc.kind, "message": exc.message}
    if exc.param:
        error["param"] = exc.param
    if exc.code:
        error["code"] = exc.code
    return JSONResponse({"error": error}, status_code=exc.status)


async def _api_call(request: Request, action: str, object_id: str | None = None) -> Response:
    mock, now = _mock(request), _now(request)
    if not mock.accepts(request.headers.get("authorization", "")):
        return JSONResponse(
            {"error": {"type": "invalid_request_error", "message": "Invalid API Key provided."}},
            status_code=401,
        )
    raw = await request.body() if request.method == "POST" else request.url.query.encode()
    params = decode_form(raw)
    idempotency_key = request.headers.get("idempotency-key") if request.method == "POST" else None
    fingerprint = hashlib.sha256(f"{request.url.path}\n".encode() + raw).hexdigest()
    try:
        if idempotency_key is not None:
            replayed = await mock.idempotent_replay(idempotency_key, fingerprint)
            if replayed is not None:
                return Response(replayed, media_type="application/json")
        result = await _dispatch(mock, action, object_id, params, now, idempotency_key)
    except StripeApiError as exc:
        return _stripe_error(exc)
    except DeliveryFailed as exc:
        return JSONResponse({"error": {"type": "api_error", "message": str(exc)}}, 502)
    body = json.dumps(_public(result)).encode()
    if idempotency_key is not None:
        await mock.remember(idempotency_key, fingerprint, body)
    return Response(body, media_type="application/json")


async def _dispatch(
    mock: MockStripe,
    action: str,
    object_id: str | None,
    params: dict[str, Any],
    now: int,
    idempotency_key: str | None,
) -> dict[str, Any]:
    if action == "create_customer":
        return await mock.create_customer(params, now, idempotency_key)
    if action == "create_checkout":
        return await mock.create_checkout_session(params, now, idempotency_key)
    if action == "list_checkouts":
        return await mock.list_checkout_sessions(params)
    if action == "create_portal":
        return await mock.create_portal_session(params, now)
    assert object_id is not None
    if action in ID_PREFIXES:
        return await mock.load(action, object_id)
    if action == "update_subscription":
        return await mock.update_subscription(object_id, params, now)
    if action == "cancel_subscription":
        return await mock.cancel_subscription(object_id, now)
    raise StripeApiError(404, "Unrecognized request URL.")


@api.post("/customers")
async def api_create_customer(request: Request) -> Response:
    return await _api_call(request, "create_customer")


@api.get("/customers/{object_id}")
async def api_retrieve_customer(request: Request, object_id: str) -> Response:
    return await _api_call(request, "customer", object_id)


@api.get("/checkout/sessions/{object_id}")
async def api_retrieve_checkout(request: Request, object_id: str) -> Response:
    return await _api_call(request, "checkout.session", object_id)


@api.get("/subscriptions/{object_id}")
async def api_retrieve_subscription(request: Request, object_id: str) -> Response:
    return await _api_call(request, "subscription", object_id)


@api.get("/checkout/sessions")
async def api_list_checkouts(request: Request) -> Response:
    return await _api_call(request, "list_checkouts")


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


def _action(path: str, token: str) -> str:
    """A form's action: the page's own token goes with it (ids and tokens are [a-z0-9_])."""
    return html.escape(f"/mock-stripe/{path}?token={token}", quote=True)


@router.get(
    "/checkout/{session_id}",
    summary="The mock's checkout page (Pay / Cancel); the URL's token is required",
    response_class=HTMLResponse,
)
async def checkout_page(
    request: Request, session_id: str, token: str | None = None
) -> HTMLResponse:
    try:
        session = await _mock(request).checkout_session(session_id, token)
    except StripeApiError as exc:
        return _page_error(exc)
    if session["status"] != "open":
        return page(
            "Checkout", f"<p>This checkout session is {html.escape(session['status'])}.</p>"
        )
    assert token is not None
    pay = _action(f"checkout/{session_id}/pay", token)
    cancel = _action(f"checkout/{session_id}/cancel", token)
    return page(
        "Subscribe to Pro (test mode)",
        f"<p>Price <code>{html.escape(session['_mock']['price'])}</code>, billed monthly. "
        "This is the built-in Stripe mock: no card is needed and nothing is charged.</p>"
        f"<form method='post' action='{pay}'><button type='submit'>Pay</button></form>"
        f"<form method='post' action='{cancel}'><button type='submit'>Cancel</button></form>",
    )


@router.post(
    "/checkout/{session_id}/pay",
    summary="Pay: sends the signed events to /webhook/stripe, then redirects to the success URL",
    status_code=303,
    response_class=RedirectResponse,
)
async def checkout_pay(request: Request, session_id: str, token: str | None = None) -> Response:
    try:
        target = await _mock(request).pay(session_id, token, _now(request))
    except (StripeApiError, DeliveryFailed) as exc:
        return _page_error(exc)
    return RedirectResponse(target, status_code=303)


@router.post(
    "/checkout/{session_id}/cancel",
    summary="Cancel: expires the session, redirects to the cancel URL",
    status_code=303,
    response_class=RedirectResponse,
)
async def checkout_cancel(request: Request, session_id: str, token: str | None = None) -> Response:
    try:
        target = await _mock(request).expire_session(session_id, token)
    except StripeApiError as exc:
        return _page_error(exc)
    return RedirectResponse(target, status_code=303)


@router.get(
    "/portal/{portal_id}",
    summary="The mock's billing portal page (Cancel plan); the URL's token is required",
    response_class=HTMLResponse,
)
async def portal_page(request: Request, portal_id: str, token: str | None = None) -> HTMLResponse:
    mock = _mock(request)
    try:
        portal = await mock.portal_session(portal_id, token)
    except StripeApiError as exc:
        return _page_error(exc)
    assert token is not None
    rows = []
    for sub in await mock.subscriptions_of(portal["customer"]):
        cancel = ""
        if sub["status"] != "canceled":
            action = _action(f"portal/{portal_id}/subscriptions/{sub['id']}/cancel", token)
            cancel = (
                f"<form method='post' action='{action}'>"
                "<button type='submit'>Cancel plan</button></form>"
            )
        rows.append(
            f"<li><code>{html.escape(sub['id'])}</code>: {html.escape(sub['status'])}{cancel}</li>"
        )
    listing = "".join(rows) or "<li>No subscriptions.</li>"
    back = portal.get("return_url")
    if not isinstance(back, str) or not mock.allowed_target(back):
        back = f"{mock.settings.base_url}/"
    link = html.escape(back, quote=True)
    return page("Your plan (test mode)", f"<ul>{listing}</ul><p><a href='{link}'>Return</a></p>")


@router.post(
    "/portal/{portal_id}/subscriptions/{subscription_id}/cancel",
    summary="The portal's Cancel plan button: cancels now, then back to the portal page",
    status_code=303,
    response_class=RedirectResponse,
)
async def portal_cancel(
    request: Request, portal_id: str, subscription_id: str, token: str | None = None
) -> Response:
    mock = _mock(request)
    try:
        portal = await mock.portal_session(portal_id, token)
        subscription = await mock.load("subscription", subscription_id)
        if subscription["customer"] != portal["customer"]:
            raise _missing("subscription", subscription_id)
        await mock.cancel_subscription(subscription_id, _now(request))
    except (StripeApiError, DeliveryFailed) as exc:
        return _page_error(exc)
    return RedirectResponse(mock.page_url("portal", portal_id), status_code=303)


SubscriptionAction = Callable[[MockStripe, str, int], Awaitable[dict[str, Any]]]


async def _signed_in_user(request: Request) -> int | None:
    """The user id behind the request's access token, if it is a live session."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return None
    deps = _services(request).auth
    try:
        claims = deps.tokens.decode_access_token(token.strip(), deps.clock.now())
    except AppError:
        return None
    user = await _services(request).principals.get(claims.user_id, claims.session_id)
    return user.id if user is not None else None


async def _subscription_action(
    request: Request, subscription_id: str, action: SubscriptionAction
) -> Response:
    """One of the mock's test actions on a subscription, for the service's key or the
    subscription's signed-in owner; JSON of the subscription, or the error page."""
    mock = _mock(request)
    owner: int | None = None
    try:
        if not mock.accepts(request.headers.get("authorization", "")):
            owner = await _signed_in_user(request)
            if owner is None:
                raise StripeApiError(
                    401, "Sign in (Authorization: Bearer <access_token>) as the subscriber."
                )
        subscription = await mock.load("subscription", subscription_id)
        if owner is not None and _dict(subscription["metadata"]).get("user_id") != str(owner):
            raise _missing("subscription", subscription_id)
        subscription = await action(mock, subscription_id, _now(request))
    except (StripeApiError, DeliveryFailed) as exc:
        return _page_error(exc)
    return JSONResponse(_public(subscription))


@router.post(
    "/subscriptions/{subscription_id}/cancel",
    summary="Cancel a subscription now (as its signed-in owner): customer.subscription.deleted",
)
async def cancel_subscription(request: Request, subscription_id: str) -> Response:
    return await _subscription_action(request, subscription_id, MockStripe.cancel_subscription)


@router.post(
    "/subscriptions/{subscription_id}/fail-payment",
    summary="Simulate a declined renewal (as the owner): past_due, invoice.payment_failed",
)
async def fail_payment(request: Request, subscription_id: str) -> Response:
    return await _subscription_action(request, subscription_id, MockStripe.fail_payment)


@router.post(
    "/subscriptions/{subscription_id}/renew",
    summary="Simulate a paid renewal (as the owner): the next period, invoice.paid",
)
async def renew(request: Request, subscription_id: str) -> Response:
    return await _subscription_action(request, subscription_id, MockStripe.renew)
