"""No request ever holds two pooled connections: with a pool of ONE connection every flow still
completes, alone and concurrently (a request needing a second connection would wait forever on
the one it holds, and fail with a pool timeout)."""

from __future__ import annotations

import asyncio

import pytest

from tests.helpers import bearer, new_number, request_otp


@pytest.fixture
def settings_overrides():
    return {"db_pool_size": 1, "db_max_overflow": 0, "db_pool_timeout_seconds": 10}


async def _full_journey(client, clock_free_number: str) -> None:
    number = clock_free_number
    password = "a long passphrase 1"
    signup = await client.post(
        "/auth/signup", json={"mobile_number": number, "password": password, "name": "Pool"}
    )
    assert signup.status_code == 201, signup.text
    otp = await request_otp(client, number)
    verified = await client.post(
        "/auth/verify-otp", json={"mobile_number": number, "otp": otp, "password": password}
    )
    assert verified.status_code == 200
    login = await client.post("/auth/login", json={"mobile_number": number, "password": password})
    assert login.status_code == 200, login.text
    tokens = login.json()
    assert (await client.get("/user/me", headers=bearer(tokens))).status_code == 200
    rotated = await client.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert rotated.status_code == 200
    tokens = rotated.json()
    changed = await client.post(
        "/auth/change-password",
        headers=bearer(tokens),
        json={"current_password": password, "new_password": "another long passphrase 2"},
    )
    assert changed.status_code == 200, changed.text
    tokens = changed.json()
    reset = await client.post("/auth/forgot-password", json={"mobile_number": number})
    assert reset.status_code == 200
    done = await client.post(
        "/auth/reset-password",
        json={
            "mobile_number": number,
            "otp": reset.json()["otp"],
            "new_password": "a third long passphrase 3",
        },
    )
    assert done.status_code == 200, done.text
    out = await client.post("/auth/logout", headers=bearer(done.json()))
    assert out.status_code == 204
    assert (await client.get("/ready")).status_code == 200


async def test_every_flow_completes_with_one_pooled_connection(client):
    await _full_journey(client, new_number())


async def test_concurrent_flows_share_one_connection(client):
    await asyncio.gather(*(_full_journey(client, new_number()) for _ in range(8)))
