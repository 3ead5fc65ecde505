"""DELETE /user/me through the public API, both modes: the re-check, then nothing left of the
user in any table or in the attachment storage, every old token refused, another user's
data untouched, replies in flight stopped, and files a crash left behind deleted later."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import func, select

from gemini_backend.attachments.models import StorageDeletion
from gemini_backend.attachments.storage import StorageUnavailable
from gemini_backend.chat.models import Message
from tests.chat.trees import HOLD, script_prompts
from tests.helpers import bearer, request_otp
from tests.portability.accounts import PASSWORD, fill, scan, with_password

LIFTED = {"basic_daily_limit": 1000, "send_per_minute": 1000}


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return LIFTED


def stored_files(app: Any) -> set[str]:
    root = app.state.services.settings.data_dir / "attachments"
    return {str(p) for p in root.rglob("*") if p.is_file()} if root.exists() else set()


async def delete_me(client, auth, **proof):
    return await client.request("DELETE", "/user/me", json=proof or None, headers=auth)


async def noted_deletions(app) -> int:
    async with app.state.services.database.sessionmaker() as session:
        return (await session.execute(select(func.count()).select_from(StorageDeletion))).scalar()


async def test_deleting_an_account_leaves_nothing_of_it(client, app):
    alice, bob = await with_password(client), await with_password(client)
    await fill(alice)
    bob_files = stored_files(app)
    await fill(bob)
    bob_files = stored_files(app) - bob_files
    assert len(bob_files) == 2
    assert await scan(app, alice)

    response = await delete_me(client, alice.auth, current_password=PASSWORD)
    assert response.status_code == 204, response.text

    assert await scan(app, alice) == []
    assert stored_files(app) == bob_files  # alice's two files gone, bob's kept
    assert await noted_deletions(app) == 0
    me = await client.get("/user/me", headers=alice.auth)
    assert (me.status_code, me.json()["code"]) == (401, "invalid_token")
    rooms = await client.get("/chatroom", headers=alice.auth)
    assert rooms.status_code == 401
    refreshed = await client.post(
        "/auth/refresh", json={"refresh_token": alice.tokens["refresh_token"]}
    )
    assert (refreshed.status_code, refreshed.json()["code"]) == (401, "invalid_refresh_token")
    login = await client.post(
        "/auth/login", json={"mobile_number": alice.number, "password": PASSWORD}
    )
    assert login.status_code == 401
    # Bob is untouched: his rooms, messages and files.
    for room in bob.rooms:
        assert (await bob.chat.tree(room))["messages"]
    assert (await client.get("/user/me", headers=bob.auth)).status_code == 200


async def test_the_number_can_sign_up_again_as_a_new_account(client, app, clock):
    """With nothing of anyone else's left, on SQLite too: no id of the deleted account (user,
    session, room, message) is handed out again, so its old token opens nothing."""
    alice = await with_password(client)
    room = await alice.chat.room()
    exchange = await alice.chat.exchange(room, "hello")
    assert (await delete_me(client, alice.auth, current_password=PASSWORD)).status_code == 204
    clock.advance(31)  # the resend cooldown of the first code
    otp = await request_otp(client, alice.number)
    again = await client.post("/auth/verify-otp", json={"mobile_number": alice.number, "otp": otp})
    assert again.status_code == 200, again.text
    assert again.json()["is_new_user"] is True
    assert again.json()["user"]["id"] > alice.id
    assert (await client.get("/user/me", headers=alice.auth)).status_code == 401
    new = bearer(again.json())
    new_room = (await client.post("/chatroom", json={}, headers=new)).json()["id"]
    assert new_room > room
    sent = await client.post(f"/chatroom/{new_room}/message", json={"content": "hi"}, headers=new)
    assert sent.json()["message_id"] > exchange["reply_id"]


async def test_a_fresh_sign_in_code_is_proof_enough(client, app, clock):
    alice = await with_password(client)
    await fill(alice)
    clock.advance(31)
    otp = await request_otp(client, alice.number)
    response = await delete_me(client, alice.auth, otp=otp)
    assert response.status_code == 204, response.text
    assert await scan(app, alice) == []


@pytest.mark.parametrize(
    ("proof", "status", "code"),
    [
        ({}, 422, "confirmation_required"),
        ({"current_password": "not-the-password"}, 401, "invalid_credentials"),
        ({"otp": "000000"}, 401, "invalid_credentials"),
        ({"otp": "12"}, 422, "validation_error"),
        ({"current_password": 5}, 422, "validation_error"),
    ],
)
async def test_a_missing_or_wrong_proof_deletes_nothing(client, app, proof, status, code):
    alice = await with_password(client)
    await fill(alice)
    files_before = stored_files(app)
    before = await scan(app, alice)
    response = await delete_me(client, alice.auth, **proof)
    assert (response.status_code, response.json()["code"]) == (status, code), response.text
    assert stored_files(app) == files_before
    # The same rows (a failed attempt adds its sign-in guards, which name the number).
    after = await scan(app, alice)
    assert [row for row in after if not row.startswith("auth_guards")] == before
    assert (await client.get("/user/me", headers=alice.auth)).status_code == 200


async def test_no_body_at_all_is_422(client):
    alice = await with_password(client)
    response = await client.delete("/user/me", headers=alice.auth)
    assert (response.status_code, response.json()["code"]) == (422, "confirmation_required")


async def test_without_a_token_it_is_401(client):
    response = await delete_me(client, {}, current_password=PASSWORD)
    assert response.status_code == 401


async def test_a_reply_in_flight_is_stopped_and_writes_nothing(client, app):
    script = script_prompts(app)
    try:
        alice = await with_password(client)
        room = await alice.chat.room()
        held = (await alice.chat.send(room, f"{HOLD} a long answer")).json()
        await asyncio.wait_for(script.holding.wait(), 10)
        response = await delete_me(client, alice.auth, current_password=PASSWORD)
        assert response.status_code == 204, response.text
    finally:
        script.gate.set()
    await asyncio.wait_for(script.released.wait(), 10)
    async with app.state.services.database.sessionmaker() as session:
        count = select(func.count()).select_from(Message).where(Message.chatroom_id == room)
        assert (await session.execute(count)).scalar_one() == 0
    assert held["reply_id"]
    assert await scan(app, alice) == []
    # The service goes on: another user's reply completes.
    bob = await with_password(client)
    exchange = await bob.chat.exchange(await bob.chat.room(), "still there?")
    assert exchange["final"]["status"] == "completed"


async def test_files_a_failed_delete_left_are_deleted_by_the_purge(client, app, clock):
    alice = await with_password(client)
    await fill(alice)
    storage = app.state.services.attachments.storage
    real_delete = storage.delete

    async def unavailable(key: str) -> None:
        raise StorageUnavailable()

    storage.delete = unavailable
    try:
        response = await delete_me(client, alice.auth, current_password=PASSWORD)
    finally:
        storage.delete = real_delete
    assert response.status_code == 204
    assert await scan(app, alice) == []
    left = stored_files(app)
    assert len(left) == 2  # the store was down: the files stay, noted
    assert await noted_deletions(app) == 2
    housekeeping = app.state.services.pipeline.housekeeping
    assert (await housekeeping.purge())["storage_deletions"] == 0  # too fresh: left alone
    clock.advance(61)
    assert (await housekeeping.purge())["storage_deletions"] == 2
    assert stored_files(app) == set()
    assert await noted_deletions(app) == 0
