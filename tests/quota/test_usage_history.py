"""`GET /user/usage/history`: the tokens of the caller's replies per day in QUOTA_TIMEZONE,
from what each finished reply recorded (the demo model reports its usage)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from tests.helpers import bearer, new_number, read_sse, sign_in

# Asia/Kolkata is UTC+05:30: the local day ends at 18:30 UTC.
pytestmark = pytest.mark.usefixtures("kolkata")


@pytest.fixture
def settings_overrides():
    return {"quota_timezone": "Asia/Kolkata", "basic_daily_limit": 10}


@pytest.fixture
def kolkata(settings_overrides):
    return settings_overrides


async def reply_of(client, auth, room_id, content="Plan a day in Goa") -> dict:
    """Send a message and wait for its reply: the final message."""
    response = await client.post(
        f"/chatroom/{room_id}/message", json={"content": content}, headers=auth
    )
    assert response.status_code == 202, response.text
    events = await read_sse(client, response.json()["stream_url"], auth)
    assert events[-1][1] == "done", events
    final: dict = json.loads(events[-1][2])
    return final


async def history(client, auth, **params) -> list[dict]:
    response = await client.get("/user/usage/history", params=params, headers=auth)
    assert response.status_code == 200, response.text
    days: list[dict] = response.json()["days"]
    return days


def totals(replies: list[dict]) -> dict[str, int]:
    return {
        "messages": len(replies),
        **{
            name: sum(r["usage"][name] or 0 for r in replies)
            for name in ("prompt_tokens", "output_tokens", "thinking_tokens", "cached_tokens")
        },
    }


ZERO = {
    "messages": 0,
    "prompt_tokens": 0,
    "output_tokens": 0,
    "thinking_tokens": 0,
    "cached_tokens": 0,
}


async def test_history_sums_each_local_day_of_the_caller_s_replies(client, clock):
    number = new_number()
    auth = bearer(await sign_in(client, number))
    room = (await client.post("/chatroom", json={"name": "Goa"}, headers=auth)).json()["id"]
    clock.set(datetime(2026, 11, 22, 18, 0, tzinfo=UTC))  # 23:30 on the 22nd in Kolkata
    auth = bearer(await sign_in(client, number))
    first_day = [await reply_of(client, auth, room), await reply_of(client, auth, room, "More")]
    assert all(r["usage"]["cached_tokens"] == 0 for r in first_day)  # recorded, as reported
    clock.set(datetime(2026, 11, 22, 18, 31, tzinfo=UTC))  # 00:01 on the 23rd
    auth = bearer(await sign_in(client, number))
    second_day = [await reply_of(client, auth, room, "And the evening?")]
    # Another user's replies are not the caller's.
    bob = bearer(await sign_in(client))
    bob_room = (await client.post("/chatroom", json={"name": "b"}, headers=bob)).json()["id"]
    bob_reply = await reply_of(client, bob, bob_room)

    days = await history(client, auth, days=3)
    assert days == [
        {"date": "2026-11-21", **ZERO},
        {"date": "2026-11-22", **totals(first_day)},
        {"date": "2026-11-23", **totals(second_day)},
    ]
    assert days[1]["prompt_tokens"] > 0
    assert days[1]["output_tokens"] > 0
    # The default is 30 days, today last.
    default = await history(client, auth)
    assert len(default) == 30
    assert default[-1] == days[-1]
    assert default[0]["date"] == "2026-10-25"
    assert await history(client, bob, days=1) == [{"date": "2026-11-23", **totals([bob_reply])}]


async def test_a_deleted_room_takes_its_usage_with_it(client):
    auth = bearer(await sign_in(client))
    room = (await client.post("/chatroom", json={"name": "Goa"}, headers=auth)).json()["id"]
    reply = await reply_of(client, auth, room)
    [today] = await history(client, auth, days=1)
    assert today["messages"] == 1
    assert today["output_tokens"] == reply["usage"]["output_tokens"]
    assert (await client.delete(f"/chatroom/{room}", headers=auth)).status_code == 204
    assert await history(client, auth, days=1) == [{"date": today["date"], **ZERO}]


@pytest.mark.parametrize("days", ["0", "367", "-1", "thirty", "1.5"])
async def test_days_out_of_range_is_a_422(client, days):
    auth = bearer(await sign_in(client))
    response = await client.get("/user/usage/history", params={"days": days}, headers=auth)
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "validation_error"


async def test_history_needs_a_signed_in_user(client):
    assert (await client.get("/user/usage/history")).status_code == 401
