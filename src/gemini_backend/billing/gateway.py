"""The payment gateway: the official Stripe SDK, talking to Stripe or to the built-in mock.

One code path: with STRIPE_SECRET_KEY the client talks to api.stripe.com; without it (outside
production) its API base is this server's `/mock-stripe`, so the same SDK calls, HTTP requests
and signed webhooks run in every mode.
"""

from __future__ import annotations

import stripe

from gemini_backend.config import Settings

# Any `sk_test_...` string works against the mock; it only checks that a key is sent.
MOCK_API_KEY = "sk_test_builtin_mock"
STRIPE_TIMEOUT_SECONDS = 20.0


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
            MOCK_API_KEY,
            base_addresses={"api": f"{settings.base_url}/mock-stripe"},
            http_client=http,
            max_network_retries=2,
        )
        return StripeGateway(client, http, mock=True)
    return None
