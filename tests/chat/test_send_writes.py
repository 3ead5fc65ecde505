"""What a send writes, and that a refused one writes nothing.

The send takes the quota slot, inserts both messages and moves the room's counters together (one
statement on PostgreSQL, chained on SQLite), and its receipt is built from the values written and
the ids returned: these tests hold the receipt against the stored rows.
"""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
from sqlalchemy import event, func, select

from gemini_backend.chat.models import Chatroom, Message
from gemini_backend.quota.models import DailyUsage
from tests.helpers import bearer, read_sse, sign_in


@pytest.fixture
async def alice(client):
    return bearer(await sign_in(client))


@pytest.fixture
async def room(client, alice):
    return (await client.post("/chatroom", json={"name": "writes"}, headers=alice)).json()["id"]


async def send(client, auth, room_id, content="hello there"):
    return await client.post(
        f"/chatroom/{room_id}/message", json={"content": content}, headers=auth
    )


async def stored(app, room_id):
    """(messages of the room by id, the room's row, today's slots used by anyone)."""
    async with app.state.services.database.sessionmaker() as session:
        messages = list(
            (
                await session.execute(
                    select(Message).where(Message.chatroom_id == room_id).order_by(Message.id)
                )
            ).scalars()
        )
        chatroom = await session.get(Chatroom, room_id)
        used = (await session.execute(select(func.sum(DailyUsage.count)))).scalar_one()
    return messages, chatroom, used or 0


async def test_the_receipt_is_what_was_stored(client, app, alice, room):
    response = await send(client, alice, room, "  Where is Goa?  ")
    assert response.status_code == 202, response.text
    receipt = response.json()
    user_message, reply = receipt["user_message"], receipt["reply"]
    assert (receipt["message_id"], receipt["reply_id"]) == (user_message["id"], reply["id"])
    assert receipt["reply_id"] > receipt["message_id"]  # the reply comes after its message
    got = await client.get(f"/chatroom/{room}/messages/{receipt['message_id']}", headers=alice)
    assert got.json() == user_message
    assert reply == {
        "id": receipt["reply_id"],
        "chatroom_id": room,
        "role": "assistant",
        "content": "",
        "status": "queued",
        "error": None,
        "finish_reason": None,
        "usage": {
            "prompt_tokens": None,
            "output_tokens": None,
            "thinking_tokens": None,
            "cached_tokens": None,
        },
        "model": None,
        "reply_to": receipt["message_id"],
        "parent_id": receipt["message_id"],
        "sibling_ids": [receipt["reply_id"]],
        "parts": [],
        "created_at": user_message["created_at"],
        "completed_at": None,
    }
    assert (user_message["parent_id"], user_message["sibling_ids"]) == (None, [user_message["id"]])
    assert user_message["parts"] == [{"type": "text", "text": "Where is Goa?"}]
    await read_sse(client, receipt["stream_url"], alice)  # the reply finishes

    messages, chatroom, used = await stored(app, room)
    assert [(m.id, m.role) for m in messages] == [
        (receipt["message_id"], "user"),
        (receipt["reply_id"], "assistant"),
    ]
    user_row, reply_row = messages
    assert (user_row.content, user_row.status, user_row.attempts) == (
        "Where is Goa?",
        "completed",
        0,
    )
    assert user_row.created_at == user_row.updated_at == user_row.completed_at
    assert user_row.reply_to is None
    assert user_row.quota_day is None
    assert reply_row.reply_to == reply_row.parent_id == user_row.id
    assert chatroom.active_leaf_id == reply_row.id
    assert reply_row.quota_day == date(2026, 11, 22)
    assert reply_row.created_at == user_row.created_at
    assert chatroom.message_count == 2
    assert chatroom.last_message_at == chatroom.activity_at == chatroom.updated_at
    assert chatroom.last_message_at == user_row.created_at
    assert used == 1


async def test_a_retry_writes_one_reply_and_counts_it(client, app, alice, room):
    receipt = (await send(client, alice, room)).json()
    await read_sse(client, receipt["stream_url"], alice)
    response = await client.post(
        f"/chatroom/{room}/messages/{receipt['reply_id']}/retry", headers=alice
    )
    assert response.status_code == 202, response.text
    retry = response.json()
    assert retry["reply_id"] > receipt["reply_id"]
    assert (
        retry["user_message"]
        == (
            await client.get(f"/chatroom/{room}/messages/{receipt['message_id']}", headers=alice)
        ).json()
    )
    await read_sse(client, retry["stream_url"], alice)
    messages, chatroom, used = await stored(app, room)
    assert [m.id for m in messages] == [
        receipt["message_id"],
        receipt["reply_id"],
        retry["reply_id"],
    ]
    assert messages[-1].reply_to == receipt["message_id"]
    assert messages[-1].quota_day == date(2026, 11, 22)
    assert chatroom.message_count == 3
    assert used == 2


async def _refused_send_writes_nothing(client, app, auth, room_id, code):
    before = await stored(app, room_id)
    refused = await send(client, auth, room_id)
    assert refused.status_code == 429
    assert refused.json()["code"] == code
    after = await stored(app, room_id)
    assert [m.id for m in after[0]] == [m.id for m in before[0]]
    for field in ("message_count", "last_message_at", "activity_at", "updated_at"):
        assert getattr(after[1], field) == getattr(before[1], field), field
    assert after[2] == before[2]


@pytest.mark.parametrize("settings_overrides", [{"basic_daily_limit": 1}])
async def test_a_send_over_the_daily_limit_writes_nothing(client, app, alice, room):
    assert (await send(client, alice, room)).status_code == 202
    await _refused_send_writes_nothing(client, app, alice, room, "daily_limit_reached")


@pytest.mark.parametrize("settings_overrides", [{"basic_daily_limit": 0}])
async def test_a_send_with_no_quota_at_all_writes_nothing(client, app, alice, room):
    await _refused_send_writes_nothing(client, app, alice, room, "daily_limit_reached")


@pytest.mark.parametrize("settings_overrides", [{"send_per_minute": 1}])
async def test_a_throttled_send_writes_nothing(client, app, alice, room):
    assert (await send(client, alice, room)).status_code == 202
    await _refused_send_writes_nothing(client, app, alice, room, "rate_limited")


@pytest.mark.parametrize("key", [None, "k-1"])
async def test_a_send_to_a_room_not_ones_own_writes_nothing(client, app, alice, room, key):
    bob = bearer(await sign_in(client))
    headers = bob if key is None else {**bob, "Idempotency-Key": key}
    before = await stored(app, room)
    for target in (room, 987654):
        refused = await client.post(
            f"/chatroom/{target}/message", json={"content": "mine now"}, headers=headers
        )
        assert refused.status_code == 404
        assert refused.json() == {"detail": "No such chatroom.", "code": "chatroom_not_found"}
    after = await stored(app, room)
    assert [m.id for m in after[0]] == [m.id for m in before[0]]
    assert after[1].message_count == before[1].message_count == 0
    assert after[2] == before[2] == 0  # no slot taken by anyone
    usage = (await client.get("/user/usage", headers=bob)).json()
    assert usage["used_today"] == 0


@pytest.mark.parametrize("settings_overrides", [{"basic_daily_limit": 1, "send_per_minute": 2}])
async def test_a_send_refused_by_the_daily_limit_spends_no_per_minute_slot(client, alice, room):
    # The throttle is hit before the slot is taken and given back on the refusal: were the
    # refusals counted, the third send would be `rate_limited`.
    assert (await send(client, alice, room)).status_code == 202
    for _ in range(3):
        assert (await send(client, alice, room)).json()["code"] == "daily_limit_reached"


async def test_a_send_is_one_statement_on_postgresql(client, app, alice, room):
    """Without an Idempotency-Key: the room check, the slot, both inserts and the room's
    counters in one statement, on the driver (no ORM session, no SQLAlchemy execution)."""
    if app.state.services.database.engine.dialect.name != "postgresql":
        pytest.skip("SQLite chains the steps in one transaction")
    seen: list[str] = []
    sent: list[str] = []
    drivers: list[Any] = []

    def record(_conn, _cursor, statement, *_args):
        seen.append(statement)

    def log_queries(query: Any) -> None:
        sent.append(query.query)

    def checkout(dbapi_connection, _record, _proxy):
        driver = dbapi_connection.driver_connection
        if driver not in drivers:
            drivers.append(driver)
            driver.add_query_logger(log_queries)

    engine = app.state.services.database.engine.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    event.listen(engine, "checkout", checkout)
    try:
        assert (await send(client, alice, room)).status_code == 202
    finally:
        event.remove(engine, "before_cursor_execute", record)
        event.remove(engine, "checkout", checkout)
        for driver in drivers:
            driver.remove_query_logger(log_queries)
    assert seen == []
    assert len(sent) == 1, sent
    assert sent[0].startswith("WITH room AS")


@pytest.mark.parametrize("settings_overrides", [{"basic_daily_limit": 1}])
async def test_a_retry_over_the_daily_limit_writes_nothing(client, app, alice, room):
    receipt = (await send(client, alice, room)).json()
    await read_sse(client, receipt["stream_url"], alice)
    before = await stored(app, room)
    refused = await client.post(
        f"/chatroom/{room}/messages/{receipt['reply_id']}/retry", headers=alice
    )
    assert refused.status_code == 429
    assert refused.json()["code"] == "daily_limit_reached"
    after = await stored(app, room)
    assert [m.id for m in after[0]] == [m.id for m in before[0]]
    assert after[1].message_count == before[1].message_count == 2
    assert after[2] == before[2] == 1


async def test_room_detail_and_history_show_each_message_as_it_is_stored(client, alice, room):
    # The room's latest messages come from a select of columns, a single message from the ORM
    # row (MessageOut.from_row): both must show a message the same way.
    for text in ("first", "second"):
        receipt = (await send(client, alice, room, text)).json()
        await read_sse(client, receipt["stream_url"], alice)
    detail = (await client.get(f"/chatroom/{room}", headers=alice)).json()
    history = (await client.get(f"/chatroom/{room}/messages", headers=alice)).json()
    assert history == {"messages": detail["messages"], "next_cursor": None}
    assert [m["role"] for m in detail["messages"]] == ["user", "assistant"] * 2
    for shown in detail["messages"]:
        one = await client.get(f"/chatroom/{room}/messages/{shown['id']}", headers=alice)
        assert one.json() == shown
    reply = detail["messages"][1]
    assert reply["usage"]["output_tokens"] > 0
    assert reply["model"] == "demo"
    page = (await client.get(f"/chatroom/{room}/messages?limit=3", headers=alice)).json()
    assert page["messages"] == detail["messages"][1:]
    assert page["next_cursor"] == str(detail["messages"][1]["id"])
