"""The daily quota: usage endpoints, the local-midnight rollover, the per-minute throttle."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from tests.helpers import bearer, new_number, sign_in


async def send(client, auth, room_id):
    return await client.post(f"/chatroom/{room_id}/message", json={"content": "x"}, headers=auth)


async def new_room(client, auth):
    return (await client.post("/chatroom", json={"name": "q"}, headers=auth)).json()["id"]


@pytest.mark.parametrize("path", ["/chatroom/usage", "/user/usage", "/chatroom/usage/"])
async def test_usage_endpoints(client, path):
    auth = bearer(await sign_in(client))
    room = await new_room(client, auth)
    body = (await client.get(path, headers=auth)).json()
    assert body == {
        "tier": "basic",
        "daily_limit": 5,
        "used_today": 0,
        "remaining_today": 5,
        "resets_at": "2026-11-23T00:00:00Z",
        "monthly_tokens": None,
    }
    for _ in range(2):
        assert (await send(client, auth, room)).status_code == 202
    body = (await client.get(path, headers=auth)).json()
    assert (body["used_today"], body["remaining_today"]) == (2, 3)
    assert (await client.get(path)).status_code == 401


class TestNonUtcDay:
    # Asia/Kolkata is UTC+05:30: the local day ends at 18:30 UTC.
    @pytest.fixture
    def settings_overrides(self):
        return {"quota_timezone": "Asia/Kolkata", "basic_daily_limit": 2}

    async def test_rollover_at_local_midnight(self, client, clock):
        number = new_number()
        auth = bearer(await sign_in(client, number))
        room = await new_room(client, auth)
        clock.set(datetime(2026, 11, 22, 18, 0, tzinfo=UTC))  # 23:30 in Kolkata
        auth = bearer(await sign_in(client, number))
        assert (await send(client, auth, room)).status_code == 202
        assert (await send(client, auth, room)).status_code == 202
        refused = await send(client, auth, room)
        assert refused.status_code == 429
        assert refused.headers["Retry-After"] == str(30 * 60)
        usage = (await client.get("/user/usage", headers=auth)).json()
        assert usage["resets_at"] == "2026-11-22T18:30:00Z"
        clock.set(datetime(2026, 11, 22, 18, 30, 1, tzinfo=UTC))  # 00:00:01 the next day
        auth = bearer(await sign_in(client, number))  # the earlier token has expired
        accepted = await send(client, auth, room)
        assert accepted.status_code == 202
        assert accepted.headers["X-RateLimit-Remaining"] == "1"


class TestUnlimitedAndZero:
    @pytest.fixture
    def settings_overrides(self):
        return {"basic_daily_limit": 0}

    async def test_zero_limit_refuses_every_send(self, client):
        auth = bearer(await sign_in(client))
        room = await new_room(client, auth)
        response = await send(client, auth, room)
        assert response.status_code == 429
        assert response.json()["code"] == "daily_limit_reached"
        usage = (await client.get("/user/usage", headers=auth)).json()
        assert usage["used_today"] == 0


class TestPerMinuteThrottle:
    @pytest.fixture
    def settings_overrides(self):
        return {"send_per_minute": 3, "basic_daily_limit": 100}

    async def test_sends_per_minute(self, client):
        auth = bearer(await sign_in(client))
        room = await new_room(client, auth)
        statuses = [(await send(client, auth, room)).status_code for _ in range(4)]
        assert statuses == [202, 202, 202, 429]
        refused = await send(client, auth, room)
        assert refused.json()["code"] == "rate_limited"
        assert 0 < int(refused.headers["Retry-After"]) <= 60
        usage = (await client.get("/user/usage", headers=auth)).json()
        assert usage["used_today"] == 3  # throttled sends spend no quota
        other = bearer(await sign_in(client))
        assert (await send(client, other, await new_room(client, other))).status_code == 202


async def test_quota_is_per_user(client):
    alice = bearer(await sign_in(client))
    bob = bearer(await sign_in(client))
    alice_room, bob_room = await new_room(client, alice), await new_room(client, bob)
    results = await asyncio.gather(
        *(send(client, alice, alice_room) for _ in range(7)),
        *(send(client, bob, bob_room) for _ in range(7)),
    )
    alice_ok = sum(r.status_code == 202 for r in results[:7])
    bob_ok = sum(r.status_code == 202 for r in results[7:])
    assert (alice_ok, bob_ok) == (5, 5)
