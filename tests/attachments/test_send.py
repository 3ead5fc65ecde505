"""Sending attachments with a message, through the public API, in both modes: the user
message's parts, the attachments given to the message, the demo model listing what it received
(read from the storage), and the send's refusals (which write nothing and spend no slot)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.attachments import files
from tests.helpers import bearer, read_sse, sign_in

LIMIT = 64 * 1024


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {
        "attachment_max_bytes": LIMIT,
        "message_attachments_max_bytes": LIMIT // 2,
        "max_attachments_per_message": 3,
    }


async def upload(client, auth, room_id, name, data) -> dict[str, Any]:
    response = await client.post(
        f"/chatroom/{room_id}/attachments", files={"file": (name, data)}, headers=auth
    )
    assert response.status_code == 201, response.text
    return response.json()


async def send(client, auth, room_id, **body):
    return await client.post(f"/chatroom/{room_id}/message", json=body, headers=auth)


async def reply_of(client, auth, receipt) -> dict[str, Any]:
    events = await read_sse(client, receipt["stream_url"], auth)
    assert events[-1][1] == "done", events
    return json.loads(events[-1][2])


async def usage_count(client, auth) -> int:
    return (await client.get("/user/usage", headers=auth)).json()["used_today"]


async def test_a_message_with_a_png_and_a_pdf(client, alice, room):
    png, pdf = files.png(), files.pdf()
    photo = await upload(client, alice, room, "photo.png", png)
    scan = await upload(client, alice, room, "scan.pdf", pdf)
    response = await send(
        client, alice, room, content="What are these?", attachment_ids=[photo["id"], scan["id"]]
    )
    assert response.status_code == 202, response.text
    receipt = response.json()
    parts = [
        {"type": "text", "text": "What are these?"},
        {
            "type": "attachment",
            "attachment_id": photo["id"],
            "media_type": "image/png",
            "filename": "photo.png",
        },
        {
            "type": "attachment",
            "attachment_id": scan["id"],
            "media_type": "application/pdf",
            "filename": "scan.pdf",
        },
    ]
    assert receipt["user_message"]["parts"] == parts
    assert receipt["user_message"]["content"] == "What are these?"
    reply = await reply_of(client, alice, receipt)
    assert reply["content"] == (
        'Demo reply (context: 0 earlier messages []) to: "What are these?" '
        f"[attachments: photo.png image/png {len(png)} B, scan.pdf application/pdf {len(pdf)} B]"
    )
    # Stored: the room's messages show the same parts.
    shown = await client.get(f"/chatroom/{room}/messages/{receipt['message_id']}", headers=alice)
    assert shown.json()["parts"] == parts


async def test_attachments_alone_and_later_turns_still_see_them(client, alice, room):
    photo = await upload(client, alice, room, "p.png", files.png())
    first = await send(client, alice, room, attachment_ids=[photo["id"]])
    assert first.status_code == 202, first.text
    receipt = first.json()
    assert receipt["user_message"]["content"] == ""
    assert [p["type"] for p in receipt["user_message"]["parts"]] == ["attachment"]
    await reply_of(client, alice, receipt)
    second = (await send(client, alice, room, content="and now?")).json()
    reply = await reply_of(client, alice, second)
    assert reply["content"].endswith(f"[attachments: p.png image/png {photo['size']} B]")
    # A retry of the first reply gets the file again.
    retried = await client.post(
        f"/chatroom/{room}/messages/{receipt['reply_id']}/retry", headers=alice
    )
    assert retried.status_code == 202, retried.text
    again = await reply_of(client, alice, retried.json())
    assert again["content"].endswith(f"[attachments: p.png image/png {photo['size']} B]")


async def test_refused_sends_write_nothing(client, alice, room):
    bob = bearer(await sign_in(client))
    bobs_room = (await client.post("/chatroom", json={"name": "b"}, headers=bob)).json()["id"]
    bobs = await upload(client, bob, bobs_room, "b.png", files.png())
    mine = await upload(client, alice, room, "a.png", files.png())
    other_room = (await client.post("/chatroom", json={"name": "c"}, headers=alice)).json()["id"]
    used = await usage_count(client, alice)

    nothing = await send(client, alice, room, content="  ")
    assert nothing.status_code == 422
    foreign = await send(client, alice, room, content="x", attachment_ids=[bobs["id"]])
    assert foreign.status_code == 404
    assert foreign.json()["code"] == "attachment_not_found"
    elsewhere = await send(client, alice, other_room, content="x", attachment_ids=[mine["id"]])
    assert elsewhere.status_code == 404
    twice = await send(client, alice, room, attachment_ids=[mine["id"], mine["id"]])
    assert twice.status_code == 422
    many = [(await upload(client, alice, room, f"{i}.txt", b"t"))["id"] for i in range(4)]
    too_many = await send(client, alice, room, attachment_ids=many)
    assert too_many.status_code == 422
    assert too_many.json()["code"] == "too_many_attachments"
    big = await upload(client, alice, room, "big.png", files.png(extra=LIMIT // 2 - 100))
    too_big = await send(client, alice, room, attachment_ids=[mine["id"], big["id"]])
    assert too_big.status_code == 413
    assert too_big.json()["code"] == "attachment_too_large"
    assert await usage_count(client, alice) == used
    detail = (await client.get(f"/chatroom/{room}", headers=alice)).json()
    assert detail["messages"] == []

    sent = await send(client, alice, room, content="ok", attachment_ids=[mine["id"]])
    assert sent.status_code == 202, sent.text
    again = await send(client, alice, room, content="again", attachment_ids=[mine["id"]])
    assert again.status_code == 422
    assert again.json()["code"] == "attachment_already_sent"


async def test_an_idempotent_send_with_attachments(client, alice, room):
    photo = await upload(client, alice, room, "p.png", files.png())
    key = {"Idempotency-Key": "send-with-photo"}
    body = {"content": "look", "attachment_ids": [photo["id"]]}
    url = f"/chatroom/{room}/message"
    first = await client.post(url, json=body, headers={**alice, **key})
    assert first.status_code == 202, first.text
    replay = await client.post(url, json=body, headers={**alice, **key})
    assert replay.json()["message_id"] == first.json()["message_id"]
    other = await client.post(url, json={"content": "look"}, headers={**alice, **key})
    assert other.status_code == 422
    assert other.json()["code"] == "idempotency_key_reused"
