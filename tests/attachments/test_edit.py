"""Editing a message that had attachments: the new version keeps them unless the edit names its
own (`attachment_ids`), the new reply sees them, the old version keeps its own, and the bytes
they share are deleted with the room once."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from gemini_backend.attachments.models import Attachment
from gemini_backend.attachments.storage import StoredObjectMissing
from tests.attachments import files
from tests.attachments.test_send import (  # noqa: F401 (settings_overrides: a fixture)
    LIMIT,
    reply_of,
    send,
    settings_overrides,
    upload,
    usage_count,
)
from tests.helpers import bearer, sign_in


async def edit(client, auth, room_id, message_id, **body):
    return await client.post(
        f"/chatroom/{room_id}/messages/{message_id}/edit", json=body, headers=auth
    )


def attached(message: dict[str, Any]) -> list[tuple[str, str]]:
    return [(p["filename"], p["media_type"]) for p in message["parts"] if p["type"] == "attachment"]


async def sent_with_files(client, auth, room_id, png: bytes, pdf: bytes) -> dict[str, Any]:
    photo = await upload(client, auth, room_id, "photo.png", png)
    scan = await upload(client, auth, room_id, "scan.pdf", pdf)
    response = await send(
        client, auth, room_id, content="What are these?", attachment_ids=[photo["id"], scan["id"]]
    )
    assert response.status_code == 202, response.text
    receipt = response.json()
    await reply_of(client, auth, receipt)
    return receipt


async def test_an_edit_keeps_the_attachments(client, alice, room):
    png, pdf = files.png(), files.pdf()
    first = await sent_with_files(client, alice, room, png, pdf)
    response = await edit(client, alice, room, first["message_id"], content="Describe them")
    assert response.status_code == 202, response.text
    receipt = response.json()
    new_version = receipt["user_message"]
    assert new_version["sibling_ids"] == [first["message_id"], receipt["message_id"]]
    assert attached(new_version) == [("photo.png", "image/png"), ("scan.pdf", "application/pdf")]
    reply = await reply_of(client, alice, receipt)
    assert reply["content"] == (
        'Demo reply (context: 0 earlier messages []) to: "Describe them" '
        f"[attachments: photo.png image/png {len(png)} B, scan.pdf application/pdf {len(pdf)} B]"
    )
    # Stored, downloadable under the new version's ids, and the old version keeps its own.
    url = f"/chatroom/{room}/messages/{receipt['message_id']}"
    shown = (await client.get(url, headers=alice)).json()
    assert shown["parts"] == new_version["parts"]
    ids = [p["attachment_id"] for p in shown["parts"] if p["type"] == "attachment"]
    old_ids = [p["attachment_id"] for p in first["user_message"]["parts"] if "attachment_id" in p]
    assert set(ids).isdisjoint(old_ids)
    download = await client.get(f"/chatroom/{room}/attachments/{ids[0]}", headers=alice)
    assert (download.status_code, download.content) == (200, png)
    old = await client.get(f"/chatroom/{room}/messages/{first['message_id']}", headers=alice)
    assert attached(old.json()) == attached(first["user_message"])
    # A retry of the new reply sees them too.
    retried = await client.post(
        f"/chatroom/{room}/messages/{receipt['reply_id']}/retry", headers=alice
    )
    assert retried.status_code == 202, retried.text
    again = await reply_of(client, alice, retried.json())
    assert again["content"].endswith(f"scan.pdf application/pdf {len(pdf)} B]")


async def test_an_edit_can_replace_or_drop_them(client, alice, room):
    png, pdf = files.png(), files.pdf()
    first = await sent_with_files(client, alice, room, png, pdf)
    kept_pdf = first["user_message"]["parts"][2]["attachment_id"]
    notes = await upload(client, alice, room, "notes.txt", b"some notes")
    response = await edit(
        client,
        alice,
        room,
        first["message_id"],
        content="Only these",
        attachment_ids=[notes["id"], kept_pdf],
    )
    assert response.status_code == 202, response.text
    receipt = response.json()
    assert attached(receipt["user_message"]) == [
        ("notes.txt", "text/plain"),
        ("scan.pdf", "application/pdf"),
    ]
    reply = await reply_of(client, alice, receipt)
    assert reply["content"].endswith(
        f"[attachments: notes.txt text/plain 10 B, scan.pdf application/pdf {len(pdf)} B]"
    )
    dropped = await edit(
        client, alice, room, first["message_id"], content="No files", attachment_ids=[]
    )
    assert dropped.status_code == 202, dropped.text
    assert attached(dropped.json()["user_message"]) == []
    reply = await reply_of(client, alice, dropped.json())
    assert "[attachments" not in reply["content"]


async def test_refused_edits_write_nothing(client, alice, room):
    first = await sent_with_files(client, alice, room, files.png(), files.pdf())
    bob = bearer(await sign_in(client))
    bobs_room = (await client.post("/chatroom", json={"name": "b"}, headers=bob)).json()["id"]
    bobs = await upload(client, bob, bobs_room, "b.png", files.png())
    other = (await send(client, alice, room, content="later")).json()
    await reply_of(client, alice, other)
    used = await usage_count(client, alice)
    tree = (await client.get(f"/chatroom/{room}/tree", headers=alice)).json()
    message_id = first["message_id"]

    foreign = await edit(client, alice, room, message_id, content="x", attachment_ids=[bobs["id"]])
    assert (foreign.status_code, foreign.json()["code"]) == (404, "attachment_not_found")
    # Another message's attachments are not this one's to keep.
    again = await edit(
        client,
        alice,
        room,
        other["message_id"],
        content="x",
        attachment_ids=[first["user_message"]["parts"][1]["attachment_id"]],
    )
    assert (again.status_code, again.json()["code"]) == (422, "attachment_already_sent")
    kept = [p["attachment_id"] for p in first["user_message"]["parts"][1:]]
    twice = await edit(client, alice, room, message_id, content="x", attachment_ids=kept * 2)
    assert twice.status_code == 422
    extra = [(await upload(client, alice, room, f"{n}.txt", b"t"))["id"] for n in range(2)]
    many = await edit(client, alice, room, message_id, content="x", attachment_ids=kept + extra)
    assert (many.status_code, many.json()["code"]) == (422, "too_many_attachments")
    big = await upload(client, alice, room, "big.png", files.png(extra=LIMIT // 2 - 100))
    too_big = await edit(
        client, alice, room, message_id, content="x", attachment_ids=[kept[0], big["id"]]
    )
    assert (too_big.status_code, too_big.json()["code"]) == (413, "attachment_too_large")
    assert await usage_count(client, alice) == used
    assert (await client.get(f"/chatroom/{room}/tree", headers=alice)).json() == tree


async def test_the_shared_bytes_go_with_the_room(client, app, alice, room):
    first = await sent_with_files(client, alice, room, files.png(), files.pdf())
    response = await edit(client, alice, room, first["message_id"], content="Again")
    assert response.status_code == 202, response.text
    await reply_of(client, alice, response.json())
    storage = app.state.services.attachments.storage
    async with app.state.services.database.sessionmaker() as session:
        rows = (await session.execute(select(Attachment.storage_key))).scalars().all()
    assert (len(rows), len(set(rows))) == (4, 2)  # four rows, two objects
    assert (await client.delete(f"/chatroom/{room}", headers=alice)).status_code == 204
    for key in set(rows):
        with pytest.raises(StoredObjectMissing):
            await storage.read(key)
