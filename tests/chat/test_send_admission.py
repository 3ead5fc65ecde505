"""The per-minute throttle runs before the send's transaction and gives its slot back when the
send is refused later; concurrent sends of one user keep the counters exact and the tree whole.

Through the HTTP API, on the mode's real database (the PostgreSQL send is one statement in
autocommit, so the counters rest on that statement's row locks alone).
"""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import func, select

from gemini_backend.chat.models import Chatroom, Message
from gemini_backend.quota.models import DailyUsage
from tests.helpers import bearer, sign_in


@pytest.fixture
async def alice(client):
    return bearer(await sign_in(client))


async def new_room(client, auth) -> int:
    room: int = (await client.post("/chatroom", json={}, headers=auth)).json()["id"]
    return room


async def send(client, auth, room_id, content="hello", key=None):
    headers = auth if key is None else {**auth, "Idempotency-Key": key}
    return await client.post(
        f"/chatroom/{room_id}/message", json={"content": content}, headers=headers
    )


def codes(responses) -> list[str]:
    return [r.json()["code"] if r.status_code != 202 else "accepted" for r in responses]


@pytest.mark.parametrize("settings_overrides", [{"basic_daily_limit": 2, "send_per_minute": 3}])
async def test_daily_refusals_leave_the_per_minute_slots_to_later_sends(client, alice):
    room = await new_room(client, alice)
    sent = [await send(client, alice, room) for _ in range(2)]
    refused = [await send(client, alice, room) for _ in range(4)]
    assert codes(sent + refused) == ["accepted"] * 2 + ["daily_limit_reached"] * 4
    # Had the refusals kept their slots, the throttle (3 a minute) would have refused the
    # fourth and later ones itself.
    assert (await send(client, alice, room)).json()["code"] == "daily_limit_reached"


@pytest.mark.parametrize("settings_overrides", [{"send_per_minute": 2}])
async def test_sends_to_no_room_of_ones_own_spend_no_per_minute_slot(client, alice):
    bob = bearer(await sign_in(client))
    bobs_room = await new_room(client, bob)
    for target in (bobs_room, 987654, bobs_room):
        assert (await send(client, alice, target)).status_code == 404
    room = await new_room(client, alice)
    results = [await send(client, alice, room) for _ in range(3)]
    assert codes(results) == ["accepted", "accepted", "rate_limited"]


@pytest.mark.parametrize("settings_overrides", [{"send_per_minute": 2}])
async def test_a_replay_spends_no_per_minute_slot(client, alice):
    room = await new_room(client, alice)
    first = await send(client, alice, room, key="k-1")
    replays = [await send(client, alice, room, key="k-1") for _ in range(3)]
    assert {r.json()["reply_id"] for r in replays} == {first.json()["reply_id"]}
    later = [await send(client, alice, room) for _ in range(2)]
    assert codes([first, *replays, *later]) == ["accepted"] * 5 + ["rate_limited"]


@pytest.mark.parametrize("settings_overrides", [{"send_per_minute": 2}])
async def test_a_replay_is_answered_while_the_minute_is_full(client, alice):
    """A client retrying a send that went through gets its receipt, not a 429."""
    room = await new_room(client, alice)
    first = await send(client, alice, room, key="k-1")
    second = await send(client, alice, room)
    assert codes([first, second]) == ["accepted", "accepted"]
    replay = await send(client, alice, room, key="k-1")
    assert replay.status_code == 202, replay.text
    assert replay.json()["reply_id"] == first.json()["reply_id"]
    # The same key for another message, or a new key, is still throttled.
    other = await send(client, alice, room, content="something else", key="k-1")
    fresh = await send(client, alice, room, key="k-2")
    assert codes([other, fresh]) == ["idempotency_key_reused", "rate_limited"]


async def _stored(app, room_ids):
    """Per room: (its message count, its active leaf, its messages by id); today's slots."""
    rooms = {}
    async with app.state.services.database.sessionmaker() as session:
        for room_id in room_ids:
            room = await session.get(Chatroom, room_id)
            found = select(Message).where(Message.chatroom_id == room_id).order_by(Message.id)
            messages = list((await session.execute(found)).scalars())
            rooms[room_id] = (room.message_count, room.active_leaf_id, messages)
        used = (await session.execute(select(func.sum(DailyUsage.count)))).scalar_one()
    return rooms, used or 0


def _assert_one_chain(message_count, leaf, messages) -> None:
    """Sends that each follow the active leaf form one chain: user message, its reply, the next
    user message after that reply, and so on; the room's counters agree with the rows."""
    assert message_count == len(messages)
    parent = None
    for user_message, reply in zip(messages[::2], messages[1::2], strict=True):
        assert (user_message.role, user_message.parent_id) == ("user", parent)
        assert (reply.role, reply.reply_to, reply.parent_id) == ("assistant",) + (
            user_message.id,
        ) * 2
        parent = reply.id
    assert leaf == parent


@pytest.mark.parametrize("settings_overrides", [{"basic_daily_limit": 20, "send_per_minute": 1000}])
@pytest.mark.parametrize("rooms", [1, 4])
async def test_32_concurrent_sends_of_one_user_keep_the_counters_exact(client, app, alice, rooms):
    room_ids = [await new_room(client, alice) for _ in range(rooms)]
    responses = await asyncio.gather(
        *(send(client, alice, room_ids[n % rooms], f"m{n}") for n in range(32))
    )
    assert sorted(codes(responses)) == ["accepted"] * 20 + ["daily_limit_reached"] * 12
    stored, used = await _stored(app, room_ids)
    assert used == 20
    usage = (await client.get("/user/usage", headers=alice)).json()
    assert (usage["used_today"], usage["remaining_today"]) == (20, 0)
    accepted = {r.json()["reply_id"] for r in responses if r.status_code == 202}
    assert {m.id for _, _, ms in stored.values() for m in ms if m.role == "assistant"} == accepted
    for message_count, leaf, messages in stored.values():
        _assert_one_chain(message_count, leaf, messages)
