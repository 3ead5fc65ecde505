"""The payment gateway: the official Stripe SDK, talking to Stripe or to the built-in mock.

One code path: with STRIPE_SECRET_KEY the client talks to api.stripe.com; without it (outside
production) its API base is this server's `/mock-stripe`, so the same SDK calls, HTTP requests
and signed webhooks run in every mode.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import TYPE_CHECKING

from gemini_backend.config import Settings

if TYPE_CHECKING:
    import stripe

STRIPE_TIMEOUT_SECONDS = 20.0


def mock_api_key(settings: Settings) -> str:
    """The one API key the built-in mock accepts: derived from the JWT key, so every process of
    a deployment holds the same one and nobody without the server's secret can call the mock."""
    digest = hmac.new(
        settings.jwt_secret_value().encode(), b"stripe-mock-api-key", hashlib.sha256
    ).hexdigest()
    return f"sk_test_mock_{digest[:40]}"


class StripeGateway:
    """The SDK's client, built at its first use: importing the SDK is a good part of a
    second of a process's start, spent only where payments are used."""

    def __init__(self, settings: Settings, mock: bool) -> None:
        self._settings = settings
        self.mock = mock
        self._client: stripe.StripeClient | None = None
        self._http: stripe.HTTPXClient | None = None

    @property
    def client(self) -> stripe.StripeClient:
        if self._client is None:
            self._client, self._http = _connect(self._settings, self.mock)
        return self._client

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.close_async()  # type: ignore[no-untyped-call]


def _connect(settings: Settings, mock: bool) -> tuple[stripe.StripeClient, stripe.HTTPXClient]:
    import stripe

    http = stripe.HTTPXClient(timeout=STRIPE_TIMEOUT_SECONDS)
    if not mock:
        assert settings.stripe_secret_key is not None
        key = settings.stripe_secret_key.get_secret_value()
        return stripe.StripeClient(key, http_client=http, max_network_retries=2), http
    client = stripe.StripeClient(
        mock_api_key(settings),
        base_addresses={"api": f"{settings.base_url}/mock-stripe"},
        http_client=http,
        max_network_retries=2,
    )
    return client, http


def create_gateway(settings: Settings) -> StripeGateway | None:
    """None when payments are unavailable (production without STRIPE_SECRET_KEY)."""
    if settings.stripe_secret_key is not None:
        return StripeGateway(settings, mock=False)
    if settings.stripe_mock_enabled:
        return StripeGateway(settings, mock=True)
    return None
