"""The payment gateway: the official Stripe SDK, talking to Stripe or to the built-in mock.

One code path: with STRIPE_SECRET_KEY the client talks to api.stripe.com; without it (outside
production) its API base is this server's `/mock-stripe`, so the same SDK calls, HTTP requests
and signed webhooks run in every mode.
"""

from __future__ import annotations

import hashlib
import hmac

import stripe

from gemini_backend.config import Settings

STRIPE_TIMEOUT_SECONDS = 20.0


def mock_api_key(settings: Settings) -> str:
    """The one API key the built-in mock accepts: derived from the JWT key, so every process of
    a deployment holds the same one and nobody without the server's secret can call the mock."""
    digest = hmac.new(
        settings.jwt_secret_value().encode(), b"stripe-mock-api-key", hashlib.sha256
    ).hexdigest()
    return f"sk_test_mock_{digest[:40]}"


class StripeGateway:
    def __init__(self, client: stripe.StripeClient, http: stripe.HTTPXClient, mock: bool) -> None:
        self.client = client
        self._http = http
        self.mock = mock

    async def aclose(self) -> None:
        await self._http.close_async()  # type: ignore[no-untyped-call]


def create_gateway(settings: Settings) -> StripeGateway | None:
    """None when payments are unavailable (production without STRIPE_SECRET_KEY)."""
    http = stripe.HTTPXClient(timeout=STRIPE_TIMEOUT_SECONDS)
    if settings.stripe_secret_key is not None:
        client = stripe.StripeClient(
            settings.stripe_secret_key.get_secret_value(), http_client=http, max_network_retries=2
        )
        return StripeGateway(client, http, mock=False)
    if settings.stripe_mock_enabled:
        client = stripe.StripeClient(
            mock_api_key(settings),
            base_addresses={"api": f"{settings.base_url}/mock-stripe"},
            http_client=http,
            max_network_retries=2,
        )
        return StripeGateway(client, http, mock=True)
    return None
