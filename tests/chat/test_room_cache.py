"""The chatroom cache's in-process level (chat.cache): rooms and list pages served from memory,
and never stale. Every change to a room (a send, a reply claimed, finished or cancelled, a rename)
reaches the cached body at once, in the process that made it and, over Redis Pub/Sub, in the
others; CHATROOM_LOCAL_CACHE_SECONDS is 300 s here, so only a notice can explain a change seen
within a test."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.auth.test_principal_cache import (
    PRODUCTION_ONLY,
    api_process,
    client_of,
    counting_statements,
)
from tests.chat.test_reply_control import GatedProvider, send, use_provider
from tests.helpers import bearer, insert_queued_reply, read_sse, sign_in, until_noticed


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"chatroom_local_cache_seconds": 300}


@pytest.fixture
async def alice(app, client):
    if app.state.services.settings.is_production_mode:
        await app.state.services.chatroom_cache.wait_subscribed()
    return bearer(await sign_in(client))


@pytest.fixture
async def room(client, alice):
    return (await client.post("/chatroom", json={"name": "r"}, headers=alice)).json()["id"]


def statuses(detail: dict[str, Any]) -> list[tuple[str, str]]:
    return [(m["role"], m["status"]) for m in detail["messages"]]


async def test_a_room_is_served_from_memory_until_it_changes(app, client, alice, room):
    url = f"/chatroom/{room}"
    first = await client.get(url, headers=alice)
    assert first.status_code == 200
    with counting_statements(app) as statements:
        again = await client.get(url, headers=alice)
    assert statements == []
    assert again.json() == first.json()

    renamed = await client.patch(url, json={"name": "renamed"}, headers=alice)
    assert renamed.status_code == 200
    assert (await client.get(url, headers=alice)).json()["name"] == "renamed"

    provider = GatedProvider()
    use_provider(app, provider)
    receipt = await send(client, alice, room, "hello")
    seen = (await client.get(url, headers=alice)).json()
    assert [m["id"] for m in seen["messages"]] == [receipt["message_id"], receipt["reply_id"]]
    assert seen["message_count"] == 2

    # The worker (another process's cache in production) claims the reply...
    await asyncio.wait_for(provider.first_chunk_sent.wait(), 10)

    async def generating() -> bool:
        detail = (await client.get(url, headers=alice)).json()
        return statuses(detail)[-1] == ("assistant", "generating")

    await until_noticed(app.state.services.chatroom_cache, generating)

    # ...and finishes it: a client that saw `done` and reads the room at once sees it done.
    provider.gate.set()
    events = await read_sse(client, receipt["stream_url"], alice)
    assert events[-1][1] == "done"
    done = (await client.get(url, headers=alice)).json()
    if not app.state.services.settings.is_production_mode:
        assert statuses(done)[-1] == ("assistant", "completed")

    async def completed() -> bool:
        detail = (await client.get(url, headers=alice)).json()
        return statuses(detail)[-1] == ("assistant", "completed")

    await until_noticed(app.state.services.chatroom_cache, completed)
    final = (await client.get(url, headers=alice)).json()
    assert final["messages"][-1]["content"] == "partial more words here"
    with counting_statements(app) as statements:
        assert (await client.get(url, headers=alice)).json() == final
    assert statements == []


async def test_another_users_request_for_a_cached_room_is_404(client, alice, room):
    assert (await client.get(f"/chatroom/{room}", headers=alice)).status_code == 200
    bob = bearer(await sign_in(client))
    response = await client.get(f"/chatroom/{room}", headers=bob)
    assert response.status_code == 404
    assert response.json()["code"] == "chatroom_not_found"


async def test_a_deleted_room_is_404_at_once(client, alice, room):
    assert (await client.get(f"/chatroom/{room}", headers=alice)).status_code == 200
    assert (await client.delete(f"/chatroom/{room}", headers=alice)).status_code == 204
    assert (await client.get(f"/chatroom/{room}", headers=alice)).status_code == 404


async def test_a_room_read_before_a_change_is_never_stored_after_it(app, client, alice, room):
    """A reader misses, a send commits and drops the user's bodies, then the reader stores what
    it read before the send: the store is refused."""
    user_id = (await client.get("/user/me", headers=alice)).json()["id"]
    cache = app.state.services.chatroom_cache
    found = cache.room_lookup(user_id, room)
    assert found.body is None
    receipt = await send(client, alice, room, "written meanwhile")
    cache.room_put(user_id, found, room, b'{"stale": true}')
    detail = (await client.get(f"/chatroom/{room}", headers=alice)).json()
    assert detail["messages"][0]["id"] == receipt["message_id"]


async def test_a_cancelled_queued_reply_shows_in_the_cached_room(app, client, alice, room):
    provider = GatedProvider()
    use_provider(app, provider)
    first = await send(client, alice, room, "first")
    await asyncio.wait_for(provider.first_chunk_sent.wait(), 10)
    # Answering no message: the first's reply is in progress, and a message has one at a time.
    queued_id = await insert_queued_reply(app, room, None)
    url = f"/chatroom/{room}"

    # Written behind the service's back: the room is read (and cached) after that write.
    async def cached_with_queued() -> bool:
        return ("assistant", "queued") in statuses((await client.get(url, headers=alice)).json())

    await until_noticed(app.state.services.chatroom_cache, cached_with_queued)
    cancel = await client.post(f"{url}/messages/{queued_id}/cancel", headers=alice)
    assert cancel.json()["status"] == "cancelled"
    detail = (await client.get(url, headers=alice)).json()
    assert {m["id"]: m["status"] for m in detail["messages"]}[queued_id] == "cancelled"
    provider.gate.set()
    await read_sse(client, first["stream_url"], alice)


@PRODUCTION_ONLY
async def test_changes_made_by_other_processes_reach_the_room_cached_in_this_one(
    app, make_settings, clock
):
    """B caches the room at each step; the send goes through A, the reply through the worker
    (claimed, then finished): B sees each change, while its cache would otherwise keep the old
    body for 300 s."""
    provider = GatedProvider()
    use_provider(app, provider)  # the worker's provider
    settings = make_settings(chatroom_local_cache_seconds=300)
    async with (
        api_process(settings, clock) as app_a,
        api_process(settings, clock) as app_b,
        client_of(app_a) as a,
        client_of(app_b) as b,
    ):
        await app_b.state.services.chatroom_cache.wait_subscribed()
        alice = bearer(await sign_in(a))
        room = (await a.post("/chatroom", json={"name": "r"}, headers=alice)).json()["id"]
        url = f"/chatroom/{room}"

        async def b_sees(expected: list[tuple[str, str]]) -> None:
            async def check() -> bool:
                return statuses((await b.get(url, headers=alice)).json()) == expected

            await until_noticed(app_b.state.services.chatroom_cache, check)
            with counting_statements(app_b) as statements:  # and serves it from memory
                assert statuses((await b.get(url, headers=alice)).json()) == expected
            assert statements == []

        await b_sees([])
        receipt = await send(a, alice, room, "hello")
        await asyncio.wait_for(provider.first_chunk_sent.wait(), 10)
        await b_sees([("user", "completed"), ("assistant", "generating")])
        provider.gate.set()
        events = await read_sse(a, receipt["stream_url"], alice)
        assert events[-1][1] == "done"
        await b_sees([("user", "completed"), ("assistant", "completed")])
        listing = (await b.get("/chatroom", headers=alice)).json()["chatrooms"]
        assert listing[0]["message_count"] == 2


async def test_every_tree_write_reaches_the_cached_room_and_list(app, client, alice, room):
    """Edit, retry, a branch switch and a fork each change what the cached room (or list)
    shows: each is seen at once, and the unchanged body is then served from memory again."""
    url = f"/chatroom/{room}"

    async def shown() -> dict[str, Any]:
        detail: dict[str, Any] = (await client.get(url, headers=alice)).json()
        return detail

    async def cached_again() -> None:
        body = await shown()
        with counting_statements(app) as statements:
            assert await shown() == body
        assert statements == []

    first = await send(client, alice, room, "first")
    await read_sse(client, first["stream_url"], alice)
    await cached_again()

    edit = await client.post(
        f"{url}/messages/{first['message_id']}/edit", json={"content": "edited"}, headers=alice
    )
    assert edit.status_code == 202, edit.text
    edited = edit.json()
    assert [m["id"] for m in (await shown())["messages"]] == [
        edited["message_id"],
        edited["reply_id"],
    ]
    await read_sse(client, edited["stream_url"], alice)

    async def edit_done() -> bool:
        return statuses(await shown())[-1] == ("assistant", "completed")

    await until_noticed(app.state.services.chatroom_cache, edit_done)
    await cached_again()

    switched = await client.put(
        f"{url}/active", json={"leaf_id": first["message_id"]}, headers=alice
    )
    assert switched.status_code == 200, switched.text
    assert (await shown())["active_leaf_id"] == first["reply_id"]
    assert (await shown())["messages"][0]["id"] == first["message_id"]
    await cached_again()

    retry = await client.post(f"{url}/messages/{first['reply_id']}/retry", headers=alice)
    assert retry.status_code == 202, retry.text
    retried = retry.json()
    assert (await shown())["active_leaf_id"] == retried["reply_id"]
    await read_sse(client, retried["stream_url"], alice)

    async def retry_done() -> bool:
        return statuses(await shown())[-1] == ("assistant", "completed")

    await until_noticed(app.state.services.chatroom_cache, retry_done)
    await cached_again()

    listed = (await client.get("/chatroom", headers=alice)).json()["chatrooms"]
    fork = await client.post(f"{url}/fork", json={"message_id": retried["reply_id"]}, headers=alice)
    assert fork.status_code == 201, fork.text
    after = (await client.get("/chatroom", headers=alice)).json()["chatrooms"]
    assert [r["id"] for r in after] == [fork.json()["id"]] + [r["id"] for r in listed]
