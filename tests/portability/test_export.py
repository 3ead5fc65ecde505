"""Export through the public API, both modes: a room's whole tree as JSON (parents, parts,
statuses, options, attachment metadata), its active branch as Markdown, and every room of the
account as streamed NDJSON, only the caller's."""

from __future__ import annotations

import json

import pytest

from gemini_backend.portability import exports
from tests.chat.trees import Chat
from tests.helpers import bearer, sign_in

LIFTED = {"basic_daily_limit": 1000, "send_per_minute": 1000}


@pytest.fixture
def settings_overrides():
    return LIFTED


@pytest.fixture
async def alice(client):
    return Chat(client, bearer(await sign_in(client)))


@pytest.fixture
async def bob(client):
    return Chat(client, bearer(await sign_in(client)))


async def branched_room(chat: Chat) -> tuple[int, dict, dict]:
    room = await chat.room("Recipes", system_prompt="Be brief.")
    first = await chat.exchange(room, "Pancakes?")
    edited = await chat.accepted(await chat.edit(room, first["message_id"], "Crêpes?"))
    uploaded = await chat.client.post(
        f"/chatroom/{room}/attachments",
        files={"file": ("list.txt", b"flour, eggs, milk\n", "text/plain")},
        headers=chat.auth,
    )
    sent = await chat.client.post(
        f"/chatroom/{room}/message",
        json={"content": "With this list", "attachment_ids": [uploaded.json()["id"]]},
        headers=chat.auth,
    )
    await chat.accepted(sent)
    return room, first, edited


async def export(chat: Chat, room: int, **params):
    return await chat.client.get(f"/chatroom/{room}/export", params=params, headers=chat.auth)


async def test_the_json_export_is_the_whole_tree(alice):
    room, _, _ = await branched_room(alice)
    response = await export(alice, room)
    assert response.status_code == 200, response.text
    assert response.headers["content-disposition"] == f'attachment; filename="chatroom-{room}.json"'
    document = response.json()
    assert (document["format"], document["version"]) == ("gemini-backend/chatroom", 1)
    assert document["chatroom"]["name"] == "Recipes"
    assert document["chatroom"]["system_prompt"] == "Be brief."
    tree = await alice.tree(room)
    assert document["chatroom"]["active_leaf_id"] == tree["active_leaf_id"]
    fields = ("id", "parent_id", "role", "content", "parts", "status")
    assert [{k: m[k] for k in fields} for m in document["messages"]] == [
        {k: m[k] for k in fields} for m in tree["messages"]
    ]
    assert len(document["messages"]) == 6  # both versions of the first exchange
    [attachment] = document["attachments"]
    assert (attachment["filename"], attachment["media_type"]) == ("list.txt", "text/plain")
    assert attachment["message_id"] == document["messages"][4]["id"]


async def test_the_markdown_export_is_the_active_branch(alice):
    room, _, edited = await branched_room(alice)
    response = await export(alice, room, format="markdown")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/markdown; charset=utf-8"
    assert response.headers["content-disposition"] == f'attachment; filename="chatroom-{room}.md"'
    text = response.text
    assert text.startswith("# Recipes\n\n> Be brief.\n")
    assert "Crêpes?" in text
    assert "Pancakes?" not in text
    assert edited["final"]["content"] in text
    assert "*Attached: list.txt (text/plain)*" in text
    assert text.count("### You") == 2
    assert text.count("### Assistant") == 2


async def test_the_account_export_streams_every_room_of_the_caller(alice, bob, monkeypatch):
    monkeypatch.setattr(exports, "ROOMS_PER_BATCH", 2)  # three rooms: two batches
    rooms = [await branched_room(alice) for _ in range(2)]
    empty = await alice.room("Empty")
    await bob.exchange(await bob.room("Bob's"), "not alice's")
    response = await alice.client.get("/user/export", headers=alice.auth)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-ndjson"
    assert "attachment" in response.headers["content-disposition"]
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert [line["chatroom"]["id"] for line in lines] == [rooms[0][0], rooms[1][0], empty]
    for line in lines:
        assert line == (await export(alice, line["chatroom"]["id"])).json()
    assert "not alice's" not in response.text


async def test_what_cannot_be_exported(client, alice, bob):
    room = await alice.room()
    theirs = await export(bob, room)
    assert (theirs.status_code, theirs.json()["code"]) == (404, "chatroom_not_found")
    assert (await export(alice, room, format="xml")).status_code == 422
    assert (await client.get(f"/chatroom/{room}/export")).status_code == 401
    assert (await client.get("/user/export")).status_code == 401
    empty = await client.get("/user/export", headers=bob.auth)
    assert (empty.status_code, empty.text) == (200, "")
