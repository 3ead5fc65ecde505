"""Account deletion where the user's data also lives outside the database: the subscription at
Stripe (the SDK against the built-in mock, over real HTTP) and files in an S3 bucket (moto's
server on loopback, the real aiobotocore)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from gemini_backend.billing.models import StripeEvent
from tests.attachments.test_s3 import ACCESS, bucket, objects, s3_server  # noqa: F401 - fixtures
from tests.billing.conftest import live, live_port, sdk, service_key  # noqa: F401 - fixtures
from tests.billing.test_checkout import checkout, pay, status_of
from tests.portability.accounts import PASSWORD, fill, scan, with_password

pytestmark = pytest.mark.parametrize(
    "settings_overrides", [{"basic_daily_limit": 1000, "send_per_minute": 1000}], indirect=True
)


@pytest.fixture
def settings_overrides(request: pytest.FixtureRequest, live_port: int) -> dict[str, Any]:  # noqa: F811
    overrides: dict[str, Any] = dict(request.param)
    overrides["public_base_url"] = f"http://127.0.0.1:{live_port}"
    if "bucket" in request.fixturenames:
        server = request.getfixturevalue("s3_server")
        overrides.update(
            s3_endpoint_url=server.url,
            s3_bucket=request.getfixturevalue("bucket"),
            s3_access_key_id=ACCESS["aws_access_key_id"],
            s3_secret_access_key=ACCESS["aws_secret_access_key"],
        )
    return overrides


async def test_the_subscription_is_cancelled_at_stripe(live, sdk, app):  # noqa: F811
    alice = await with_password(live)
    await pay(live, await checkout(live, alice.auth))
    subscription = (await status_of(live, alice.auth))["subscription_id"]
    assert (await sdk.v1.subscriptions.retrieve_async(subscription)).status == "active"

    response = await live.request(
        "DELETE", "/user/me", json={"current_password": PASSWORD}, headers=alice.auth
    )
    assert response.status_code == 204, response.text

    assert (await sdk.v1.subscriptions.retrieve_async(subscription)).status == "canceled"
    assert await scan(app, alice) == []
    # The ledger of Stripe's events stays (ids, types, times), naming no one.
    async with app.state.services.database.sessionmaker() as session:
        events = (await session.execute(select(StripeEvent.type, StripeEvent.user_id))).all()
    assert {kind for kind, _ in events} >= {"customer.subscription.deleted"}
    assert {user for _, user in events} == {None}
    assert (await live.get("/user/me", headers=alice.auth)).status_code == 401


async def test_the_files_in_the_bucket_go_too(live, app, s3_server, bucket):  # noqa: F811
    assert app.state.services.attachments.storage.kind == "s3"
    alice, bob = await with_password(live), await with_password(live)
    await fill(bob)
    bobs = set(objects(s3_server, bucket))
    await fill(alice)
    assert len(set(objects(s3_server, bucket)) - bobs) == 2

    response = await live.request(
        "DELETE", "/user/me", json={"current_password": PASSWORD}, headers=alice.auth
    )
    assert response.status_code == 204, response.text

    assert set(objects(s3_server, bucket)) == bobs
    assert await scan(app, alice) == []
