"""Chatrooms: create, list (cursor pagination, per-user cache), get, rename, delete, history."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest
from sqlalchemy import func, select

from gemini_backend.chat.models import Chatroom, Message
from tests.helpers import bearer, sign_in

ROOM_KEYS = {
    "id",
    "name",
    "title",
    "system_prompt",
    "message_count",
    "last_message_at",
    "model",
    "temperature",
    "thinking",
    "grounding",
    "created_at",
    "updated_at",
}


@pytest.fixture
async def alice(client):
    return bearer(await sign_in(client))


@pytest.fixture
async def bob(client):
    return bearer(await sign_in(client))


async def create(client, auth, **body):
    response = await client.post("/chatroom", json=body, headers=auth)
    assert response.status_code == 201, response.text
    return response.json()


async def listing(client, auth, **params):
    response = await client.get("/chatroom", params=params, headers=auth)
    assert response.status_code == 200, response.text
    return response


async def test_create_with_name_and_prompt(client, alice):
    room = await create(client, alice, name="  Trip plans  ", system_prompt="Be brief.")
    assert set(room) == ROOM_KEYS
    assert room["name"] == room["title"] == "Trip plans"
    assert room["system_prompt"] == "Be brief."
    assert room["message_count"] == 0
    assert room["last_message_at"] is None
    # The default model, with its own defaults (tests/chat/test_room_models.py sets them).
    assert (room["model"], room["temperature"], room["thinking"]) == (None, None, None)
    assert room["grounding"] is False
    assert room["created_at"] == room["updated_at"] == "2026-11-22T10:00:00Z"


async def test_create_without_name_and_with_title_alias(client, alice):
    assert (await create(client, alice))["name"] == "New chat"
    assert (await create(client, alice, title="From title"))["name"] == "From title"


@pytest.mark.parametrize(
    "body",
    [
        {"name": ""},
        {"name": "   "},
        {"name": "x" * 201},
        {"name": 5},
    ],
)
async def test_create_rejects_bad_input(client, alice, body):
    response = await client.post("/chatroom", json=body, headers=alice)
    assert response.status_code == 422
    assert response.json()["code"] == "validation_error"
    assert (await listing(client, alice)).json()["chatrooms"] == []


async def test_a_system_prompt_over_the_default_limit_is_refused(client, alice):
    response = await client.post("/chatroom", json={"system_prompt": "x" * 8001}, headers=alice)
    assert response.status_code == 422
    assert response.json()["code"] == "system_prompt_too_long"
    assert (await create(client, alice, system_prompt="x" * 8000))["system_prompt"] == "x" * 8000


@pytest.mark.parametrize("settings_overrides", [{"max_system_prompt_chars": 10}])
async def test_system_prompts_are_held_to_max_system_prompt_chars(client, alice):
    room = await create(client, alice, system_prompt="  0123456789  ")  # 10 after trimming
    for method, url in [("POST", "/chatroom"), ("PATCH", f"/chatroom/{room['id']}")]:
        response = await client.request(
            method, url, json={"name": "renamed", "system_prompt": "x" * 11}, headers=alice
        )
        assert response.status_code == 422, (method, response.text)
        assert response.json()["code"] == "system_prompt_too_long"
    # Nothing changed: no second room, the first one neither renamed nor re-prompted.
    (only,) = (await listing(client, alice)).json()["chatrooms"]
    assert (only["name"], only["system_prompt"]) == ("New chat", "0123456789")


@pytest.mark.parametrize("settings_overrides", [{"max_chatrooms_per_user": 3}])
async def test_a_user_has_at_most_max_chatrooms_per_user(client, alice, bob):
    rooms = [await create(client, alice, name=f"room {i}") for i in range(3)]
    refused = await client.post("/chatroom", json={"name": "one more"}, headers=alice)
    assert refused.status_code == 409
    assert refused.json()["code"] == "chatroom_limit_reached"
    assert len((await listing(client, alice)).json()["chatrooms"]) == 3
    await create(client, bob, name="bob's")  # the cap is per user
    assert (await client.delete(f"/chatroom/{rooms[0]['id']}", headers=alice)).status_code == 204
    await create(client, alice, name="in its place")


@pytest.mark.parametrize("settings_overrides", [{"max_chatrooms_per_user": 5}])
async def test_a_burst_of_creates_stops_exactly_at_the_cap(client, app):
    # Counted and inserted in one step per user: concurrent creates cannot all see room
    # for one more.
    for _ in range(3):
        auth = bearer(await sign_in(client))
        responses = await asyncio.gather(
            *(client.post("/chatroom", json={"name": f"r{i}"}, headers=auth) for i in range(20))
        )
        statuses = sorted(r.status_code for r in responses)
        assert statuses == [201] * 5 + [409] * 15, [
            r.text for r in responses if r.status_code >= 500
        ]
        assert len((await listing(client, auth)).json()["chatrooms"]) == 5


async def test_routes_need_auth(client):
    for method, path in [
        ("POST", "/chatroom"),
        ("GET", "/chatroom"),
        ("GET", "/chatroom/1"),
        ("PATCH", "/chatroom/1"),
        ("DELETE", "/chatroom/1"),
        ("GET", "/chatroom/1/messages"),
    ]:
        response = await client.request(method, path)
        assert response.status_code == 401, (method, path)
        assert response.json()["code"] == "not_authenticated"


async def test_list_newest_first_with_cursor_pagination(client, alice, clock):
    ids = []
    for i in range(5):
        ids.append((await create(client, alice, name=f"room {i}"))["id"])
        clock.advance(1)
    first = (await listing(client, alice, limit=2)).json()
    assert [r["id"] for r in first["chatrooms"]] == [ids[4], ids[3]]
    second = (await listing(client, alice, limit=2, cursor=first["next_cursor"])).json()
    assert [r["id"] for r in second["chatrooms"]] == [ids[2], ids[1]]
    third = (await listing(client, alice, limit=2, cursor=second["next_cursor"])).json()
    assert [r["id"] for r in third["chatrooms"]] == [ids[0]]
    assert third["next_cursor"] is None


async def test_same_timestamp_rooms_paginate_without_loss(client, alice):
    ids = {(await create(client, alice, name=f"r{i}"))["id"] for i in range(7)}
    seen, cursor = [], None
    while True:
        params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = (await listing(client, alice, **params)).json()
        seen += [r["id"] for r in page["chatrooms"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(ids)
    assert len(seen) == len(set(seen))


def _cursor(*parts: object) -> str:
    """A cursor of the server's shape holding any values (the server never issued it)."""
    return base64.urlsafe_b64encode(json.dumps(parts).encode()).decode().rstrip("=")


WHEN = "2026-11-22T10:00:00+00:00"


@pytest.mark.parametrize(
    "cursor",
    [
        "nonsense",
        "eyJ4IjoxfQ",
        "W10",
        # An id beyond BIGINT was a 500 on PostgreSQL (the driver refused the parameter).
        _cursor(WHEN, 2**63),
        _cursor(WHEN, 0),
        _cursor(WHEN, True),
        _cursor(WHEN, 1.0),
        _cursor("2026-11-22T10:00:00", 1),  # no time zone
    ],
)
async def test_bad_cursor_is_400(client, alice, cursor):
    response = await client.get("/chatroom", params={"cursor": cursor}, headers=alice)
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_cursor"


@pytest.mark.parametrize(
    "when", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+00:00"]
)
async def test_a_cursor_at_the_ends_of_time_is_answered(client, alice, when):
    # Any instant a cursor can hold is a page (empty or not) or a 400, never a 500.
    await create(client, alice, name="one")
    response = await client.get("/chatroom", params={"cursor": _cursor(when, 1)}, headers=alice)
    assert response.status_code in {200, 400}, response.text


@pytest.mark.parametrize("limit", [0, 101, "x"])
async def test_bad_limit_is_422(client, alice, limit):
    response = await client.get("/chatroom", params={"limit": limit}, headers=alice)
    assert response.status_code == 422


async def test_list_is_cached_and_every_write_invalidates_it(client, alice):
    assert (await listing(client, alice)).headers["X-Cache"] == "MISS"
    assert (await listing(client, alice)).headers["X-Cache"] == "HIT"
    room = await create(client, alice, name="one")
    after_create = await listing(client, alice)
    assert after_create.headers["X-Cache"] == "MISS"
    assert [r["name"] for r in after_create.json()["chatrooms"]] == ["one"]
    assert (await listing(client, alice)).headers["X-Cache"] == "HIT"

    renamed = await client.patch(f"/chatroom/{room['id']}", json={"name": "two"}, headers=alice)
    assert renamed.status_code == 200
    after_rename = await listing(client, alice)
    assert after_rename.headers["X-Cache"] == "MISS"
    assert after_rename.json()["chatrooms"][0]["name"] == "two"

    assert (await client.delete(f"/chatroom/{room['id']}", headers=alice)).status_code == 204
    after_delete = await listing(client, alice)
    assert after_delete.headers["X-Cache"] == "MISS"
    assert after_delete.json()["chatrooms"] == []


async def test_cache_is_per_user_and_per_page(client, alice, bob):
    await create(client, alice, name="alice's")
    await listing(client, alice)
    bob_list = await listing(client, bob)
    assert bob_list.headers["X-Cache"] == "MISS"
    assert bob_list.json()["chatrooms"] == []
    assert (await listing(client, alice, limit=1)).headers["X-Cache"] == "MISS"


async def test_failed_write_does_not_invalidate(client, alice):
    await listing(client, alice)
    bad = await client.post("/chatroom", json={"name": ""}, headers=alice)
    assert bad.status_code == 422
    assert (await listing(client, alice)).headers["X-Cache"] == "HIT"


class TestAPageReadBeforeAWrite:
    """The race the versions (shared level) and generations (in-process level) exist for: a
    reader looks the page up (a miss), a write commits and invalidates, then the reader stores
    what it read from the database before the write. Each level on its own, then both."""

    @pytest.fixture(params=[0, 300], ids=["shared-level-only", "both-levels"])
    def settings_overrides(self, request):
        return {"chatroom_local_cache_seconds": request.param}

    async def test_is_never_stored_after_it(self, app, client, alice):
        await page_read_before_a_write(app, client, alice)


async def test_a_page_read_before_a_write_is_never_kept_in_process(app, client, alice):
    """The in-process level alone: the shared level's version check is bypassed."""
    cache = app.state.services.chatroom_cache
    if app.state.services.settings.is_production_mode:
        await cache.wait_subscribed()
    me = (await client.get("/user/me", headers=alice)).json()
    found = await cache.lookup(me["id"], "20:")
    assert found.body is None
    await create(client, alice, name="written meanwhile")
    found.version = None  # the shared level does not store it
    await cache.put(me["id"], found, "20:", b'{"chatrooms": [], "next_cursor": null}')
    fresh = await listing(client, alice)
    assert fresh.headers["X-Cache"] == "MISS"
    assert [r["name"] for r in fresh.json()["chatrooms"]] == ["written meanwhile"]


async def page_read_before_a_write(app, client, alice):
    cache = app.state.services.chatroom_cache
    settings = app.state.services.settings
    if settings.is_production_mode and settings.chatroom_local_cache_seconds > 0:
        await cache.wait_subscribed()
    me = (await client.get("/user/me", headers=alice)).json()
    found = await cache.lookup(me["id"], "20:")
    assert found.body is None
    await create(client, alice, name="written meanwhile")
    await cache.put(me["id"], found, "20:", b'{"chatrooms": [], "next_cursor": null}')
    fresh = await listing(client, alice)
    assert fresh.headers["X-Cache"] == "MISS"
    assert [r["name"] for r in fresh.json()["chatrooms"]] == ["written meanwhile"]
    assert (await listing(client, alice)).headers["X-Cache"] == "HIT"


class TestCacheTtl:
    @pytest.fixture
    def settings_overrides(self):
        return {"chatroom_cache_ttl": 0}

    async def test_ttl_zero_disables_the_cache(self, client, alice):
        await listing(client, alice)
        assert (await listing(client, alice)).headers["X-Cache"] == "MISS"


async def test_get_room_with_messages(client, alice):
    room = await create(client, alice, name="r")
    response = await client.get(f"/chatroom/{room['id']}", headers=alice)
    assert response.status_code == 200
    body = response.json()
    assert set(body) == ROOM_KEYS | {"messages", "active_leaf_id"}
    assert body["messages"] == []


async def test_other_users_rooms_are_404_everywhere(client, alice, bob):
    room = await create(client, alice, name="private", system_prompt="secret")
    rid = room["id"]
    for method, path, body in [
        ("GET", f"/chatroom/{rid}", None),
        ("PATCH", f"/chatroom/{rid}", {"name": "hijack"}),
        ("DELETE", f"/chatroom/{rid}", None),
        ("GET", f"/chatroom/{rid}/messages", None),
    ]:
        response = await client.request(method, path, json=body, headers=bob)
        assert response.status_code == 404, (method, path)
        assert response.json() == {"detail": "No such chatroom.", "code": "chatroom_not_found"}
    missing = await client.get("/chatroom/999999", headers=alice)
    assert missing.status_code == 404
    assert missing.json()["code"] == "chatroom_not_found"
    still = (await client.get(f"/chatroom/{rid}", headers=alice)).json()
    assert still["name"] == "private"


@pytest.mark.parametrize("room_id", ["0", "-1", "abc", str(2**63)])
async def test_invalid_ids_are_422(client, alice, room_id):
    response = await client.get(f"/chatroom/{room_id}", headers=alice)
    assert response.status_code == 422


async def test_patch_rules(client, alice, clock):
    room = await create(client, alice)
    clock.advance(5)
    response = await client.patch(
        f"/chatroom/{room['id']}",
        json={"title": "Named", "system_prompt": "Be kind."},
        headers=alice,
    )
    assert response.status_code == 200
    body = response.json()
    assert body["name"] == "Named"
    assert body["system_prompt"] == "Be kind."
    assert body["updated_at"] == "2026-11-22T10:00:05Z"
    cleared = await client.patch(
        f"/chatroom/{room['id']}", json={"system_prompt": None}, headers=alice
    )
    assert cleared.json()["system_prompt"] is None
    assert cleared.json()["name"] == "Named"
    null_name = await client.patch(f"/chatroom/{room['id']}", json={"name": None}, headers=alice)
    assert null_name.status_code == 422
    empty = await client.patch(f"/chatroom/{room['id']}", json={}, headers=alice)
    assert empty.status_code == 200
    assert empty.json()["updated_at"] == "2026-11-22T10:00:05Z"


async def test_trailing_slash(client, alice):
    assert (await client.post("/chatroom/", json={"name": "s"}, headers=alice)).status_code == 201
    response = await client.get("/chatroom/", headers=alice)
    assert response.status_code == 200
    assert len(response.json()["chatrooms"]) == 1


async def _insert_messages(app, room_id: int, count: int, clock) -> list[int]:
    async with app.state.services.database.sessionmaker() as session:
        rows = []
        for i in range(count):
            now = clock.now()
            rows.append(
                Message(
                    chatroom_id=room_id,
                    role="user" if i % 2 == 0 else "assistant",
                    content=f"m{i}",
                    status="completed",
                    attempts=0,
                    created_at=now,
                    updated_at=now,
                    completed_at=now,
                )
            )
        parent = None
        for message in rows:  # one branch, oldest first, ending at the active leaf
            message.parent_id = parent
            session.add(message)
            await session.flush()
            parent = message.id
        room = await session.get(Chatroom, room_id)
        room.active_leaf_id = parent
        await session.commit()
        return [m.id for m in rows]


async def test_history_pagination_and_room_detail(client, app, alice, clock):
    room = await create(client, alice, name="h")
    ids = await _insert_messages(app, room["id"], 120, clock)
    detail = (await client.get(f"/chatroom/{room['id']}", headers=alice)).json()
    assert [m["id"] for m in detail["messages"]] == ids[-50:]
    message = detail["messages"][0]
    assert set(message) == {
        "id",
        "chatroom_id",
        "role",
        "content",
        "status",
        "error",
        "finish_reason",
        "usage",
        "model",
        "reply_to",
        "parent_id",
        "sibling_ids",
        "parts",
        "created_at",
        "completed_at",
    }
    assert set(message["usage"]) == {
        "prompt_tokens",
        "output_tokens",
        "thinking_tokens",
        "cached_tokens",
    }

    seen, before = [], None
    while True:
        params = {"limit": 40} | ({"before": before} if before else {})
        page = await client.get(f"/chatroom/{room['id']}/messages", params=params, headers=alice)
        assert page.status_code == 200
        body = page.json()
        seen = [m["id"] for m in body["messages"]] + seen
        before = body["next_cursor"]
        if before is None:
            break
    assert seen == ids


async def test_delete_removes_messages(client, app, alice, clock):
    room = await create(client, alice, name="d")
    await _insert_messages(app, room["id"], 3, clock)
    assert (await client.delete(f"/chatroom/{room['id']}", headers=alice)).status_code == 204
    assert (await client.get(f"/chatroom/{room['id']}", headers=alice)).status_code == 404
    async with app.state.services.database.sessionmaker() as session:
        count = (
            await session.execute(
                select(func.count()).select_from(Message).where(Message.chatroom_id == room["id"])
            )
        ).scalar_one()
    assert count == 0


async def test_concurrent_creates(client, alice):
    rooms = await asyncio.gather(*(create(client, alice, name=f"c{i}") for i in range(20)))
    assert len({r["id"] for r in rooms}) == 20
    listed = (await listing(client, alice, limit=100)).json()["chatrooms"]
    assert len(listed) == 20


@pytest.mark.parametrize(
    "body", [{"name": "a\x00b"}, {"name": "ok", "system_prompt": "be\x00brief"}]
)
async def test_text_with_a_nul_character_is_422_and_stores_nothing(client, alice, body):
    # PostgreSQL's text cannot hold U+0000: refused up front in both modes, never a 500.
    response = await client.post("/chatroom", json=body, headers=alice)
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "validation_error"
    room = await create(client, alice, name="kept")
    renamed = await client.patch(f"/chatroom/{room['id']}", json=body, headers=alice)
    assert renamed.status_code == 422, renamed.text
    assert [r["name"] for r in (await listing(client, alice)).json()["chatrooms"]] == ["kept"]
