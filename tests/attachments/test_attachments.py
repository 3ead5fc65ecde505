"""Attachments through the public API, on the local file store: upload (types sniffed from the
bytes, limits per plan, bad names), download (headers, owners only), deletion with the room,
and the purge of uploads that never finished."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import pytest
from sqlalchemy import func, select

from gemini_backend.attachments.models import PENDING, Attachment
from tests.attachments import files
from tests.helpers import bearer, sign_in

LIMIT = 64 * 1024


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"attachment_max_bytes": LIMIT, "message_attachments_max_bytes": 2 * LIMIT}


async def upload(client, auth, room_id, name: str, data: bytes, ctype="application/octet-stream"):
    return await client.post(
        f"/chatroom/{room_id}/attachments", files={"file": (name, data, ctype)}, headers=auth
    )


def stored_files(app) -> list[str]:
    root = app.state.services.settings.data_dir / "attachments"
    return sorted(str(p) for p in root.rglob("*") if p.is_file()) if root.exists() else []


async def rows(app) -> int:
    async with app.state.services.database.sessionmaker() as session:
        return (await session.execute(select(func.count()).select_from(Attachment))).scalar_one()


async def test_a_png_goes_up_and_comes_back_byte_for_byte(client, app, alice, room):
    data = files.png()
    # The client's type is ignored: the bytes say PNG.
    response = await upload(client, alice, room, "photo.png", data, "text/plain")
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == {
        "id",
        "chatroom_id",
        "filename",
        "media_type",
        "size",
        "sha256",
        "created_at",
    }
    assert body["chatroom_id"] == room
    assert body["filename"] == "photo.png"
    assert body["media_type"] == "image/png"
    assert body["size"] == len(data)
    assert body["sha256"] == hashlib.sha256(data).hexdigest()

    got = await client.get(f"/chatroom/{room}/attachments/{body['id']}", headers=alice)
    assert got.status_code == 200
    assert got.content == data
    assert got.headers["content-type"] == "image/png"
    assert got.headers["x-content-type-options"] == "nosniff"
    assert got.headers["content-disposition"] == (
        "attachment; filename=\"photo.png\"; filename*=UTF-8''photo.png"
    )
    assert len(stored_files(app)) == 1


@pytest.mark.parametrize(
    ("name", "data", "media_type"),
    [
        ("scan.pdf", files.pdf(), "application/pdf"),
        ("a.jpg", files.JPEG, "image/jpeg"),
        ("a.gif", files.GIF, "image/gif"),
        ("a.webp", files.WEBP, "image/webp"),
        ("a.heic", files.HEIC, "image/heic"),
        ("notes.md", "# Titel\n\nÄpfel und Birnen\n".encode(), "text/markdown"),
        ("table.csv", b"a,b\n1,2\n", "text/csv"),
        ("readme", b"plain words\n", "text/plain"),
    ],
)
async def test_each_accepted_type_is_recognised(client, alice, room, name, data, media_type):
    response = await upload(client, alice, room, name, data)
    assert response.status_code == 201, response.text
    assert response.json()["media_type"] == media_type


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("archive.zip", files.ZIP),
        ("fake.pdf", files.ZIP),  # a zip that calls itself a PDF
        ("tool.png", files.ELF),
        ("latin1.txt", "café".encode("latin-1")),
        ("nul.txt", b"text with a \x00 byte"),
    ],
)
async def test_other_bytes_are_415_and_store_nothing(client, app, alice, room, name, data):
    response = await upload(client, alice, room, name, data)
    assert response.status_code == 415, response.text
    assert response.json()["code"] == "unsupported_media_type"
    assert await rows(app) == 0
    assert stored_files(app) == []


async def test_text_that_stops_being_text_later_on_is_refused(client, app, alice, room):
    data = b"fine text\n" * 1000 + b"\xff\xfe binary tail"
    response = await upload(client, alice, room, "log.txt", data)
    assert response.status_code == 415, response.text
    assert await rows(app) == 0
    assert stored_files(app) == []


async def test_an_empty_file_is_422(client, app, alice, room):
    response = await upload(client, alice, room, "empty.txt", b"")
    assert response.status_code == 422
    assert response.json()["code"] == "empty_attachment"
    assert await rows(app) == 0


def raw_upload(filename: bytes, data: bytes) -> tuple[bytes, dict[str, str]]:
    """A multipart body written by hand: httpx would percent-encode a control character."""
    boundary = "gb-test-boundary"
    body = (
        f"--{boundary}\r\n".encode()
        + b'Content-Disposition: form-data; name="file"; filename="'
        + filename
        + b'"\r\n'
        + b"Content-Type: application/octet-stream\r\n\r\n"
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


@pytest.mark.parametrize(
    "name",
    ["../etc/passwd", "a\\b.png", "bad\x07.png", "tab\t.png", "", "rtl\u202egnp.exe", "x" * 256],
)
async def test_a_bad_file_name_is_422(client, app, alice, room, name):
    body, headers = raw_upload(name.encode(), files.png())
    response = await client.post(
        f"/chatroom/{room}/attachments", content=body, headers={**alice, **headers}
    )
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "invalid_filename"
    assert await rows(app) == 0


async def test_a_name_that_is_not_utf8_is_422(client, alice, room):
    body, headers = raw_upload(b"caf\xe9.png", files.png())
    response = await client.post(
        f"/chatroom/{room}/attachments", content=body, headers={**alice, **headers}
    )
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_filename"


async def test_a_unicode_name_is_kept_and_quoted_for_download(client, alice, room):
    body, headers = raw_upload("Übersicht 2026.pdf".encode(), files.pdf())
    response = await client.post(
        f"/chatroom/{room}/attachments", content=body, headers={**alice, **headers}
    )
    assert response.status_code == 201, response.text
    up = response.json()
    assert up["filename"] == "Übersicht 2026.pdf"
    got = await client.get(f"/chatroom/{room}/attachments/{up['id']}", headers=alice)
    assert got.headers["content-disposition"] == (
        "attachment; filename=\"_bersicht 2026.pdf\"; filename*=UTF-8''%C3%9Cbersicht%202026.pdf"
    )


async def test_a_body_without_the_file_field_is_422(client, alice, room):
    response = await client.post(
        f"/chatroom/{room}/attachments", files={"other": ("a.png", files.png())}, headers=alice
    )
    assert response.status_code == 422
    assert response.json()["code"] == "file_required"
    response = await client.post(f"/chatroom/{room}/attachments", json={}, headers=alice)
    assert response.status_code == 400
    assert response.json()["code"] == "malformed_upload"


async def test_a_file_over_the_plan_limit_is_413_and_leaves_nothing(client, app, alice, room):
    response = await upload(client, alice, room, "big.png", files.png(extra=LIMIT))
    assert response.status_code == 413, response.text
    assert response.json()["code"] == "attachment_too_large"
    assert await rows(app) == 0
    assert stored_files(app) == []
    # Just under the limit is fine.
    ok = await upload(client, alice, room, "ok.png", files.png(extra=LIMIT - 200))
    assert ok.status_code == 201, ok.text


async def test_another_users_attachment_is_404(client, alice, room):
    up = (await upload(client, alice, room, "photo.png", files.png())).json()
    bob = bearer(await sign_in(client))
    got = await client.get(f"/chatroom/{room}/attachments/{up['id']}", headers=bob)
    assert got.status_code == 404
    assert got.json()["code"] == "attachment_not_found"
    sent = await upload(client, bob, room, "x.png", files.png())
    assert sent.status_code == 404
    assert sent.json()["code"] == "chatroom_not_found"
    # And under another room of the owner it is not found either.
    other = (await client.post("/chatroom", json={"name": "b"}, headers=alice)).json()["id"]
    got = await client.get(f"/chatroom/{other}/attachments/{up['id']}", headers=alice)
    assert got.status_code == 404


async def test_deleting_the_room_deletes_the_bytes(client, app, alice, room):
    await upload(client, alice, room, "a.png", files.png())
    await upload(client, alice, room, "b.pdf", files.pdf())
    assert len(stored_files(app)) == 2
    deleted = await client.delete(f"/chatroom/{room}", headers=alice)
    assert deleted.status_code == 204
    assert stored_files(app) == []
    assert await rows(app) == 0


async def test_an_unsent_upload_can_be_deleted_and_is_gone(client, app, alice, room):
    kept = (await upload(client, alice, room, "kept.png", files.png())).json()
    dropped = (await upload(client, alice, room, "dropped.pdf", files.pdf())).json()
    assert len(stored_files(app)) == 2
    url = f"/chatroom/{room}/attachments/{dropped['id']}"
    deleted = await client.delete(url, headers=alice)
    assert (deleted.status_code, deleted.content) == (204, b"")
    assert len(stored_files(app)) == 1
    assert await rows(app) == 1
    for again in (await client.get(url, headers=alice), await client.delete(url, headers=alice)):
        assert (again.status_code, again.json()["code"]) == (404, "attachment_not_found")
    sent = await client.post(
        f"/chatroom/{room}/message",
        json={"content": "just one", "attachment_ids": [dropped["id"]]},
        headers=alice,
    )
    assert (sent.status_code, sent.json()["code"]) == (404, "attachment_not_found")
    got = await client.get(f"/chatroom/{room}/attachments/{kept['id']}", headers=alice)
    assert got.status_code == 200


async def test_a_sent_attachment_is_409_to_delete_and_stays(client, app, alice, room):
    up = (await upload(client, alice, room, "photo.png", files.png())).json()
    sent = await client.post(
        f"/chatroom/{room}/message",
        json={"content": "look", "attachment_ids": [up["id"]]},
        headers=alice,
    )
    assert sent.status_code == 202, sent.text
    url = f"/chatroom/{room}/attachments/{up['id']}"
    refused = await client.delete(url, headers=alice)
    assert (refused.status_code, refused.json()["code"]) == (409, "attachment_in_use")
    assert (await client.get(url, headers=alice)).status_code == 200
    assert len(stored_files(app)) == 1


async def test_a_delete_racing_a_send_of_the_same_file_lets_one_of_them_win(
    client, app, alice, room
):
    for round_ in range(4):  # within the Basic day's five messages
        up = (await upload(client, alice, room, f"r{round_}.png", files.png())).json()
        url = f"/chatroom/{room}/attachments/{up['id']}"
        sent, deleted = await asyncio.gather(
            client.post(
                f"/chatroom/{room}/message",
                json={"content": f"round {round_}", "attachment_ids": [up["id"]]},
                headers=alice,
            ),
            client.delete(url, headers=alice),
        )
        got = await client.get(url, headers=alice)
        if sent.status_code == 202:
            assert deleted.status_code == 409, deleted.text
            assert got.status_code == 200
            assert sent.json()["user_message"]["parts"][-1]["attachment_id"] == up["id"]
        else:
            assert deleted.status_code == 204, (sent.text, deleted.text)
            assert sent.json()["code"] in {"attachment_not_found", "attachment_already_sent"}
            assert got.status_code == 404
    messages = (await client.get(f"/chatroom/{room}/messages", headers=alice)).json()
    accepted = [m for m in messages["messages"] if m["role"] == "user"]
    used = (await client.get("/user/usage", headers=alice)).json()["used_today"]
    assert used == len(accepted)  # a refused send took no slot


async def test_only_the_owner_deletes_an_upload_and_only_in_its_room(client, app, alice, room):
    up = (await upload(client, alice, room, "photo.png", files.png())).json()
    bob = bearer(await sign_in(client))
    other = (await client.post("/chatroom", json={"name": "b"}, headers=alice)).json()["id"]
    for auth, room_id in ((bob, room), (alice, other)):
        refused = await client.delete(f"/chatroom/{room_id}/attachments/{up['id']}", headers=auth)
        assert (refused.status_code, refused.json()["code"]) == (404, "attachment_not_found")
    bad = await client.delete(f"/chatroom/{room}/attachments/0", headers=alice)
    assert bad.status_code == 422
    assert len(stored_files(app)) == 1
    assert await rows(app) == 1


async def test_the_purge_deletes_uploads_left_pending(client, app, clock, alice, room):
    services = app.state.services
    kept = await upload(client, alice, room, "kept.png", files.png())
    assert kept.status_code == 201
    # An upload whose process died after storing its bytes: a pending row and its object.
    storage = services.attachments.storage

    async def one_chunk():
        yield b"orphan bytes"

    await storage.put("rooms/orphan/key", one_chunk())
    async with services.database.sessionmaker() as session:
        session.add(
            Attachment(
                chatroom_id=room,
                user_id=await _owner(session, room),
                filename="dead.txt",
                media_type="text/plain",
                size=0,
                sha256="",
                storage_key="rooms/orphan/key",
                state=PENDING,
                created_at=clock.now(),
            )
        )
        await session.commit()
    assert await services.attachments.purge_pending() == 0  # not old enough yet
    clock.advance((services.settings.attachment_pending_minutes + 1) * 60)
    assert await services.attachments.purge_pending() == 1
    assert await rows(app) == 1
    assert len(stored_files(app)) == 1


async def _owner(session, room_id: int) -> int:
    from gemini_backend.chat.models import Chatroom

    return (
        await session.execute(select(Chatroom.user_id).where(Chatroom.id == room_id))
    ).scalar_one()
