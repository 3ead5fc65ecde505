"""The periodic purge (worker/housekeeping.py): rows past their use are deleted in bounded
batches, live ones are kept, and every sweeper runs it."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import event, func, select

from gemini_backend.auth.models import AuthGuard, OtpCode, RefreshToken
from gemini_backend.chat.models import IdempotencyKey
from gemini_backend.worker import housekeeping
from gemini_backend.worker.runtime import InProcessReplyPipeline
from tests.helpers import bearer, new_number, request_otp, sign_in

DAY = 86400
CLIENT_IP = "198.51.100.7"  # the test client's (conftest.py)


async def rows(app, column):
    async with app.state.services.database.sessionmaker() as session:
        return set((await session.execute(select(column))).scalars())


async def wrong_otp(client, number):
    """One counted failure: a guess at a live code (a guess with no code counts nothing)."""
    otp = await request_otp(client, number)
    guess = f"{(int(otp) + 1) % 1_000_000:06d}"
    response = await client.post("/auth/verify-otp", json={"mobile_number": number, "otp": guess})
    assert response.status_code == 401


async def idempotent_send(client, auth, key):
    room = (await client.post("/chatroom", json={}, headers=auth)).json()["id"]
    response = await client.post(
        f"/chatroom/{room}/message",
        json={"content": "hello"},
        headers={**auth, "Idempotency-Key": key},
    )
    assert response.status_code == 202, response.text


@pytest.mark.parametrize("settings_overrides", [{"refresh_token_ttl_seconds": 7200}])
async def test_rows_past_their_window_are_purged_and_live_ones_kept(client, app, clock):
    # Written a day ago: an unused code, a spent and a live refresh token (both expired now,
    # after 2 h), a number with failed sign-ins, a send with an Idempotency-Key.
    old_number, old_failures = new_number(), new_number()
    await request_otp(client, old_number)
    alice = await sign_in(client)
    refreshed = await client.post("/auth/refresh", json={"refresh_token": alice["refresh_token"]})
    assert refreshed.status_code == 200
    await wrong_otp(client, old_failures)
    await idempotent_send(client, bearer(alice), "old-key")
    clock.advance(DAY + 1)
    # Written now: all live.
    new_code, new_failures = new_number(), new_number()
    await request_otp(client, new_code)
    bob = await sign_in(client)
    await wrong_otp(client, new_failures)
    await idempotent_send(client, bearer(bob), "new-key")
    assert len(await rows(app, RefreshToken.id)) == 3

    purged = await app.state.services.pipeline.housekeeping.purge()

    # The failed numbers' codes go too; each failure has a guard per number and per address.
    assert purged == {
        "otp_codes": 2,
        "refresh_tokens": 2,
        "auth_guards": 2,
        "idempotency_keys": 1,
        "pending_attachments": 0,
        "storage_deletions": 0,
    }
    assert await rows(app, OtpCode.mobile_number) == {new_code, new_failures}
    assert await rows(app, AuthGuard.subject) == {new_failures, f"{new_failures} {CLIENT_IP}"}
    assert await rows(app, IdempotencyKey.key) == {"new-key"}
    (live,) = await rows(app, RefreshToken.expires_at)
    assert live > clock.now()
    # Bob's live token still works; Alice's expired one is refused, as before the purge.
    again = await client.post("/auth/refresh", json={"refresh_token": bob["refresh_token"]})
    assert again.status_code == 200
    gone = await client.post("/auth/refresh", json={"refresh_token": alice["refresh_token"]})
    assert gone.json()["code"] == "invalid_refresh_token"
    assert (await app.state.services.pipeline.housekeeping.purge())["refresh_tokens"] == 0


@pytest.mark.parametrize("settings_overrides", [{"otp_ttl_seconds": 60, "otp_resend_seconds": 120}])
async def test_a_code_inside_its_resend_cooldown_is_kept(client, app, clock):
    # With a cooldown longer than the code's life, the expired row is what refuses a resend.
    number = new_number()
    await request_otp(client, number)
    clock.advance(61)
    assert (await app.state.services.pipeline.housekeeping.purge())["otp_codes"] == 0
    early = await client.post("/auth/send-otp", json={"mobile_number": number})
    assert early.json()["code"] == "otp_resend_too_soon"
    clock.advance(60)
    assert (await app.state.services.pipeline.housekeeping.purge())["otp_codes"] == 1


async def test_the_purge_deletes_in_bounded_batches(client, app, clock, monkeypatch):
    monkeypatch.setattr(housekeeping, "PURGE_BATCH", 2)
    auth = bearer(await sign_in(client))
    for i in range(5):
        await idempotent_send(client, auth, f"key-{i}")
    clock.advance(DAY + 1)
    deletes = []

    def record(conn, cursor, statement, parameters, context, executemany):
        if statement.startswith("DELETE FROM idempotency_keys"):
            deletes.append(statement)

    engine = app.state.services.database.engine.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        purged = await app.state.services.pipeline.housekeeping.purge()
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert purged["idempotency_keys"] == 5
    assert len(deletes) == 3  # 2 + 2 + 1, each its own transaction
    assert "LIMIT" in deletes[0]
    async with app.state.services.database.sessionmaker() as session:
        assert (await session.execute(select(func.count(IdempotencyKey.id)))).scalar_one() == 0


class RecordingHousekeeping:
    def __init__(self) -> None:
        self.ran = asyncio.Event()

    async def purge(self, stop=None):
        self.ran.set()
        return {}


async def test_the_sweeper_runs_the_purge(app):
    assert app.state.services.pipeline.housekeeping is not None  # wired by Services.build
    recording = RecordingHousekeeping()
    # Sweeps 1 s apart (the shortest interval), the first purge 1 s after the start.
    settings = app.state.services.settings.model_copy(
        update={"reply_stale_seconds": 4, "purge_interval_seconds": 1}
    )
    pipeline = InProcessReplyPipeline(settings, app.state.services.pipeline.generator, recording)
    await pipeline.start(run_sweeper=True)
    try:
        await asyncio.wait_for(recording.ran.wait(), 10)
    finally:
        await pipeline.stop()
