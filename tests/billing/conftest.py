"""Billing tests: a live HTTP server for the flows where the Stripe SDK talks to the built-in
mock over HTTP and the mock delivers signed events back to /webhook/stripe."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import stripe
import uvicorn

from gemini_backend.billing.gateway import mock_api_key
from tests.processes import free_port
from tests.servers import PromptServer


@pytest.fixture
def live_port() -> int:
    return free_port()


@pytest.fixture
def settings_overrides(live_port: int) -> dict[str, Any]:
    return {"public_base_url": f"http://127.0.0.1:{live_port}"}


@pytest.fixture
async def live(app: Any, live_port: int) -> AsyncIterator[httpx.AsyncClient]:
    """The app (already started by the `app` fixture) served over real HTTP on loopback, in
    this event loop; the client does not follow redirects, so tests see the 303s."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=live_port, lifespan="off", log_config=None, access_log=False
    )
    server = PromptServer(config)
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():
            serving.result()  # raises why it could not start
        await asyncio.sleep(0.01)
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{live_port}", timeout=30, trust_env=False
        ) as client:
            yield client
    finally:
        server.exit()
        await asyncio.wait_for(serving, 15)


@pytest.fixture
def service_key(app: Any) -> str:
    """The one API key the built-in mock accepts (the service's own)."""
    return mock_api_key(app.state.services.settings)


@pytest.fixture
async def sdk(app: Any, service_key: str) -> AsyncIterator[stripe.StripeClient]:
    """A second, independent SDK client with the service's key, to read the mock's objects
    over HTTP."""
    http = stripe.HTTPXClient()
    yield stripe.StripeClient(
        service_key,
        base_addresses={"api": f"{app.state.services.settings.base_url}/mock-stripe"},
        http_client=http,
    )
    await http.close_async()
