"""The signed-in user cached per API process (auth.principals): used, and never stale.

Two API processes are two apps in this event loop, sharing the database and (in production)
Redis, each with its own cache and its own subscription to the change notices."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import event, update

from gemini_backend.auth.models import AuthSession
from gemini_backend.config import Settings
from gemini_backend.main import create_app
from tests.billing.stripe_events import Customer, post_event
from tests.conftest import BACKEND
from tests.helpers import bearer, sign_in, until_noticed

PRODUCTION_ONLY = pytest.mark.skipif(
    BACKEND != "production",
    reason="change notices between API processes go over Redis (production mode)",
)


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    # Long enough that only an invalidation can explain a change within a test.
    return {"principal_cache_seconds": 300}


@contextlib.asynccontextmanager
async def api_process(settings: Settings, clock: Any) -> AsyncIterator[Any]:
    application = create_app(settings, clock=clock)
    async with application.router.lifespan_context(application):
        if settings.is_production_mode:
            await application.state.services.principals.wait_subscribed()
        yield application


def client_of(application: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=application, client=("198.51.100.8", 40001))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


@contextlib.contextmanager
def counting_statements(application: Any) -> Any:
    seen: list[str] = []
    engine = application.state.services.database.engine.sync_engine

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


async def test_a_signed_in_request_reads_nothing_once_the_user_is_cached(app, client):
    if app.state.services.settings.is_production_mode:
        await app.state.services.principals.wait_subscribed()
    tokens = await sign_in(client)
    assert (await client.get("/user/me", headers=bearer(tokens))).status_code == 200
    with counting_statements(app) as statements:
        response = await client.get("/user/me", headers=bearer(tokens))
    assert response.status_code == 200
    assert response.json()["mobile_number"] == tokens["user"]["mobile_number"]
    assert statements == []


async def test_password_change_ends_the_other_sessions_despite_the_cache(app, client):
    tokens = await sign_in(client)
    other = await sign_in(client, tokens["user"]["mobile_number"])
    assert (await client.get("/user/me", headers=bearer(other))).status_code == 200
    otp = (
        await client.post("/auth/send-otp", json={"mobile_number": tokens["user"]["mobile_number"]})
    ).json()["otp"]
    response = await client.post(
        "/auth/change-password",
        headers=bearer(tokens),
        json={"new_password": "a much longer passphrase 42", "otp": otp},
    )
    assert response.status_code == 200, response.text
    assert (await client.get("/user/me", headers=bearer(other))).status_code == 401
    me = await client.get("/user/me", headers=bearer(response.json()))
    assert me.json()["has_password"] is True


@PRODUCTION_ONLY
async def test_logout_and_plan_change_reach_the_other_api_process(make_settings, clock):
    settings = make_settings(principal_cache_seconds=300)
    async with (
        api_process(settings, clock) as app_a,
        api_process(settings, clock) as app_b,
        client_of(app_a) as a,
        client_of(app_b) as b,
    ):
        tokens = await sign_in(a)
        auth = bearer(tokens)
        assert (await b.get("/user/me", headers=auth)).json()["tier"] == "basic"  # cached in B

        now = int(clock.now().timestamp())
        customer = Customer(tokens["user"]["id"])
        delivered = await post_event(a, customer.checkout_completed("sub_cache", now), now)
        assert delivered.json()["outcome"] == "applied"

        async def b_sees_pro() -> bool:
            return (await b.get("/user/me", headers=auth)).json()["tier"] == "pro"

        await until_noticed(app_b.state.services.principals, b_sees_pro)

        assert (await a.post("/auth/logout", headers=auth)).status_code == 204

        async def b_refuses() -> bool:
            return (await b.get("/user/me", headers=auth)).status_code == 401

        await until_noticed(app_b.state.services.principals, b_refuses)


@PRODUCTION_ONLY
async def test_a_process_that_lost_its_notices_does_not_trust_its_cache(make_settings, clock):
    """A change whose notice this process could not hear (the subscription was cut) is seen:
    the cache is emptied when the subscription comes back, and unused until then."""
    from tests.reliability.fault_proxy import FaultProxy

    plain = make_settings()
    assert plain.redis_url is not None
    redis_port = int(plain.redis_url.rsplit(":", 1)[1].split("/", 1)[0])
    database = plain.redis_url.rsplit("/", 1)[1]
    proxy = FaultProxy(redis_port).start()
    try:
        settings = make_settings(
            principal_cache_seconds=300,
            redis_url=f"redis://127.0.0.1:{proxy.port}/{database}",
        )
        async with api_process(settings, clock) as app, client_of(app) as client:
            tokens = await sign_in(client)
            auth = bearer(tokens)
            assert (await client.get("/user/me", headers=auth)).status_code == 200
            # Revoked behind the service's back: no notice is ever sent for this change.
            async with app.state.services.database.engine.begin() as conn:
                await conn.execute(update(AuthSession).values(revoked_at=clock.now()))
            assert (await client.get("/user/me", headers=auth)).status_code == 200  # cached

            principals = app.state.services.principals
            before = principals.subscriptions
            proxy.cut()
            await principals.wait_subscribed(more_than=before)
            assert (await client.get("/user/me", headers=auth)).status_code == 401
    finally:
        proxy.close()
