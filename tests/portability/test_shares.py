"""Share links through the public API, both modes: a snapshot of one branch up to a message,
public without a token, nothing of the owner in it, unchanged by later edits and renames,
revocable by its owner only, gone with its room."""

from __future__ import annotations

import asyncio

import pytest

from tests.attachments import files
from tests.chat.trees import HOLD, Chat, script_prompts
from tests.helpers import bearer, new_number, sign_in

LIFTED = {"basic_daily_limit": 1000, "send_per_minute": 1000}


@pytest.fixture
def settings_overrides():
    return LIFTED


@pytest.fixture
async def number():
    return new_number()


@pytest.fixture
async def alice(client, number):
    return Chat(client, bearer(await sign_in(client, number)))


@pytest.fixture
async def bob(client):
    return Chat(client, bearer(await sign_in(client)))


async def share(chat: Chat, room: int, **body):
    return await chat.client.post(f"/chatroom/{room}/share", json=body, headers=chat.auth)


async def shared(client, share_id: str):
    return await client.get(f"/share/{share_id}")


def seen(messages):
    return [(m["role"], m["content"], m["parts"]) for m in messages]


async def test_a_link_shows_the_active_branch_to_anyone(client, alice, number):
    room = await alice.room("Trip plans")
    first = await alice.exchange(room, "Where to go?")
    await alice.accepted(await alice.edit(room, first["message_id"], "Where to go in May?"))
    second = await alice.exchange(room, "And how long?")
    response = await share(alice, room)
    assert response.status_code == 201, response.text
    link = response.json()
    assert len(link["share_id"]) >= 22  # >= 128 bits of token_urlsafe
    assert link["url"].endswith(f"/s/{link['share_id']}")
    assert (link["chatroom_id"], link["message_id"]) == (room, second["reply_id"])

    public = await shared(client, link["share_id"])  # no Authorization header
    assert public.status_code == 200, public.text
    assert public.headers["cache-control"] == "no-store"
    body = public.json()
    assert body["name"] == "Trip plans"
    branch = (await alice.detail(room))["messages"]
    assert seen(body["messages"]) == seen(branch)
    assert body["messages"][0]["content"] == "Where to go in May?"
    assert len(body["messages"]) == 4
    # Nothing of the owner: no ids of users, rooms or messages, no number.
    assert set(body) == {"share_id", "name", "messages", "created_at"}
    assert all(set(m) == {"role", "content", "parts", "created_at"} for m in body["messages"])
    assert number.lstrip("+") not in public.text


async def test_a_snapshot_does_not_follow_later_changes(client, alice):
    room = await alice.room("Before")
    first = await alice.exchange(room, "one")
    link = (await share(alice, room)).json()
    before = (await shared(client, link["share_id"])).json()
    renamed = await client.patch(f"/chatroom/{room}", json={"name": "After"}, headers=alice.auth)
    assert renamed.status_code == 200
    await alice.accepted(await alice.edit(room, first["message_id"], "one, edited"))
    await alice.exchange(room, "two")
    assert (await shared(client, link["share_id"])).json() == before
    assert before["name"] == "Before"


async def test_a_link_up_to_a_chosen_message(client, alice):
    room = await alice.room()
    first = await alice.exchange(room, "one")
    await alice.exchange(room, "two")
    link = (await share(alice, room, message_id=first["message_id"])).json()
    body = (await shared(client, link["share_id"])).json()
    assert seen(body["messages"]) == [("user", "one", [{"type": "text", "text": "one"}])]


async def test_attachments_are_shown_by_name_and_type_only(client, alice):
    room = await alice.room()
    uploaded = await client.post(
        f"/chatroom/{room}/attachments",
        files={"file": ("photo.png", files.png(), "image/png")},
        headers=alice.auth,
    )
    assert uploaded.status_code == 201, uploaded.text
    sent = await client.post(
        f"/chatroom/{room}/message",
        json={"content": "look", "attachment_ids": [uploaded.json()["id"]]},
        headers=alice.auth,
    )
    await alice.accepted(sent)
    body = (await shared(client, (await share(alice, room)).json()["share_id"])).json()
    parts = body["messages"][0]["parts"]
    assert {"type": "attachment", "media_type": "image/png", "filename": "photo.png"} in parts
    assert "attachment_id" not in str(body)


async def test_what_cannot_be_shared(client, alice, bob):
    room = await alice.room()
    empty = await share(alice, room)
    assert (empty.status_code, empty.json()["code"]) == (409, "nothing_to_share")
    first = await alice.exchange(room, "one")
    other = await alice.room()
    await alice.exchange(other, "elsewhere")
    wrong = await share(alice, other, message_id=first["message_id"])
    assert (wrong.status_code, wrong.json()["code"]) == (404, "message_not_found")
    theirs = await share(bob, room)
    assert (theirs.status_code, theirs.json()["code"]) == (404, "chatroom_not_found")
    anonymous = await client.post(f"/chatroom/{room}/share", json={})
    assert anonymous.status_code == 401
    for bad in ({"message_id": 0}, {"message_id": "x"}, {"message_id": 2**63}):
        refused = await share(alice, room, **bad)
        assert refused.status_code == 422, refused.text


async def test_revoking_a_link(client, alice, bob):
    room = await alice.room()
    await alice.exchange(room, "one")
    first = (await share(alice, room)).json()["share_id"]
    second = (await share(alice, room)).json()["share_id"]
    listed = await client.get(f"/chatroom/{room}/shares", headers=alice.auth)
    assert [s["share_id"] for s in listed.json()["shares"]] == [second, first]
    assert (await client.delete(f"/share/{first}", headers=bob.auth)).status_code == 404
    assert (await shared(client, first)).status_code == 200
    assert (await client.delete(f"/share/{first}")).status_code == 401
    assert (await client.delete(f"/share/{first}", headers=alice.auth)).status_code == 204
    gone = await shared(client, first)
    assert (gone.status_code, gone.json()["code"]) == (404, "share_not_found")
    assert (await client.delete(f"/share/{first}", headers=alice.auth)).status_code == 404
    assert (await shared(client, second)).status_code == 200
    theirs = await client.get(f"/chatroom/{room}/shares", headers=bob.auth)
    assert theirs.status_code == 404


async def test_links_go_with_their_room(client, alice):
    room = await alice.room()
    await alice.exchange(room, "one")
    link = (await share(alice, room)).json()["share_id"]
    assert (await client.delete(f"/chatroom/{room}", headers=alice.auth)).status_code == 204
    assert (await shared(client, link)).status_code == 404


@pytest.mark.parametrize("share_id", ["x", "a" * 65, "not%20an%20id%3F%3F%3F%3F%3F", "%00" * 20])
async def test_malformed_ids_are_422(client, share_id):
    assert (await client.get(f"/share/{share_id}")).status_code == 422


async def test_an_unknown_id_is_404(client):
    response = await client.get("/share/" + "A" * 24)
    assert (response.status_code, response.json()["code"]) == (404, "share_not_found")


async def test_a_reply_still_being_written_is_left_out(client, app, alice):
    script = script_prompts(app)
    try:
        room = await alice.room()
        await alice.exchange(room, "one")
        await alice.send(room, f"{HOLD} two")
        await asyncio.wait_for(script.holding.wait(), 10)
        link = (await share(alice, room)).json()
    finally:
        script.gate.set()
    body = (await shared(client, link["share_id"])).json()
    assert [(m["role"], m["content"][:8]) for m in body["messages"]] == [
        ("user", "one"),
        ("assistant", "Demo rep"),
        ("user", f"{HOLD} two"),
    ]
