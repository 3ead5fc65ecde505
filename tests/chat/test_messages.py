"""Sending messages and receiving replies: the receipt, the queue, the demo model, SSE with
resume, idempotency, the daily quota hook, the sweeper and duplicate deliveries."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import func, select

from gemini_backend.ai.base import Finished, ProviderError, estimate_tokens
from gemini_backend.chat import replies
from gemini_backend.chat.models import Message
from gemini_backend.main import create_app
from gemini_backend.quota.models import DailyUsage
from gemini_backend.worker.runtime import InProcessReplyPipeline
from tests.conftest import BACKEND
from tests.helpers import bearer, drop_reply_stream, read_sse, sign_in


@pytest.fixture
async def alice(client):
    return bearer(await sign_in(client))


@pytest.fixture
async def room(client, alice):
    response = await client.post("/chatroom", json={"name": "talk"}, headers=alice)
    return response.json()["id"]


async def send(client, auth, room_id, content="hello there", **headers):
    return await client.post(
        f"/chatroom/{room_id}/message", json={"content": content}, headers={**auth, **headers}
    )


async def finished_reply(client, auth, receipt) -> dict:
    events = await read_sse(client, receipt["stream_url"], auth)
    assert events[-1][1] == "done", events
    return json.loads(events[-1][2])


async def count_messages(app, room_id) -> int:
    async with app.state.services.database.sessionmaker() as session:
        return (
            await session.execute(
                select(func.count()).select_from(Message).where(Message.chatroom_id == room_id)
            )
        ).scalar_one()


async def test_send_returns_a_receipt_and_the_reply_completes(client, alice, room):
    response = await send(client, alice, room, "  What is the capital of France?  ")
    assert response.status_code == 202, response.text
    receipt = response.json()
    assert set(receipt) == {
        "status",
        "message_id",
        "reply_id",
        "stream_url",
        "user_message",
        "reply",
    }
    assert receipt["status"] == "queued"
    assert receipt["user_message"]["content"] == "What is the capital of France?"
    assert receipt["user_message"]["role"] == "user"
    assert receipt["reply"]["status"] == "queued"
    assert receipt["reply"]["reply_to"] == receipt["message_id"]
    assert receipt["stream_url"] == f"/chatroom/{room}/messages/{receipt['reply_id']}/stream"
    assert response.headers["X-RateLimit-Limit"] == "5"
    assert response.headers["X-RateLimit-Remaining"] == "4"
    assert int(response.headers["X-RateLimit-Reset"]) == 14 * 3600  # 10:00 UTC -> midnight

    final = await finished_reply(client, alice, receipt)
    assert final["status"] == "completed"
    assert (
        final["content"]
        == 'Demo reply (context: 0 earlier messages []) to: "What is the capital of France?"'
    )
    assert final["model"] == "demo"
    assert final["finish_reason"] == "stop"
    assert final["usage"]["output_tokens"] > 0
    assert final["completed_at"] is not None
    stored = await client.get(f"/chatroom/{room}/messages/{receipt['reply_id']}", headers=alice)
    assert stored.json() == final


async def test_context_counts_earlier_completed_messages(client, alice, room):
    first = (await send(client, alice, room, "one")).json()
    await finished_reply(client, alice, first)
    second = (await send(client, alice, room, "two")).json()
    final = await finished_reply(client, alice, second)
    ids = [first["message_id"], first["reply_id"]]
    assert final["content"] == f'Demo reply (context: 2 earlier messages {ids}) to: "two"'
    detail = (await client.get(f"/chatroom/{room}", headers=alice)).json()
    assert [m["content"][:4] for m in detail["messages"]] == ["one", "Demo", "two", "Demo"]
    assert detail["message_count"] == 4
    assert detail["last_message_at"] is not None


@pytest.mark.parametrize(
    "settings_overrides", [{"context_max_tokens": 256, "basic_daily_limit": 100}]
)
async def test_context_keeps_the_newest_messages_within_the_token_budget(client, alice, room):
    """The claim's read stops once the branch's text has spent CONTEXT_MAX_TOKENS (issue 22):
    what a reply sees is still the newest completed messages that fit, none cut early."""
    receipts = []
    # Texts of 60 to 130 tokens, so that the budget ends inside the room's history.
    for length in (520, 240, 300, 400, 280, 360, 250):
        receipt = (await send(client, alice, room, "x" * (length - 1) + "?")).json()
        await finished_reply(client, alice, receipt)
        receipts.append(receipt)
    page = (await client.get(f"/chatroom/{room}/messages?limit=100", headers=alice)).json()
    by_id = {m["id"]: m for m in page["messages"]}
    last = receipts[-1]
    # What generation.py keeps: the newest first, within 256 less the (empty) system prompt.
    budget = 256 - estimate_tokens("")
    kept: list[int] = []
    earlier = sorted(i for i in by_id if i < last["message_id"])
    for message_id in reversed(earlier):
        cost = estimate_tokens(by_id[message_id]["content"])
        if cost > budget - estimate_tokens(by_id[last["message_id"]]["content"]) - sum(
            estimate_tokens(by_id[k]["content"]) for k in kept
        ):
            break
        kept.append(message_id)
    assert 0 < len(kept) < len(earlier)  # the budget ends inside the history
    ids = sorted(kept)
    final = by_id[last["reply_id"]]
    noun = "message" if len(ids) == 1 else "messages"
    assert final["content"].startswith(f"Demo reply (context: {len(ids)} earlier {noun} {ids})")


# A model that takes its time between chunks (as real ones do): every chunk is its own event.
@pytest.mark.parametrize("settings_overrides", [{"demo_chunk_delay_ms": 20}])
async def test_stream_events_and_resume(client, alice, room):
    receipt = (await send(client, alice, room, "stream me please")).json()
    events = await read_sse(client, receipt["stream_url"], alice)
    deltas = [e for e in events if e[1] == "delta"]
    assert len(deltas) >= 4  # the demo model's chunks
    assert [e[1] for e in events] == ["delta"] * len(deltas) + ["done"]
    full = "".join(json.loads(e[2])["text"] for e in deltas)
    assert full == json.loads(events[-1][2])["content"]
    assert len({e[0] for e in events}) == len(events)  # every event has its own id
    # Resume after the second delta: the rest, without loss or duplicates.
    resumed = await read_sse(client, receipt["stream_url"], alice, last_event_id=events[1][0])
    assert resumed == events[2:]
    # A stream opened after the end replays the whole reply.
    assert await read_sse(client, receipt["stream_url"], alice) == events


@pytest.mark.parametrize(
    "last_event_id",
    ["abc", "18446744073709551616-0", "1-18446744073709551616", b"\xb2-0", "1-", "-1"],
)
async def test_a_last_event_id_that_is_no_stream_id_replays_the_whole_reply(
    client, alice, room, last_event_id
):
    # Out of range or not ASCII digits: Redis refused such an id, and the stream ended right
    # after it opened (an unhandled error) instead of replaying.
    receipt = (await send(client, alice, room, "stream me please")).json()
    events = await read_sse(client, receipt["stream_url"], alice)
    assert events[-1][1] == "done"
    assert await read_sse(client, receipt["stream_url"], alice, last_event_id) == events


async def test_chunks_arriving_faster_than_the_stream_takes_them_are_batched(client, alice, room):
    # The demo model at zero delay yields its 4+ chunks at once: rather than a Redis round trip
    # each, the worker appends the first and then the rest together, with nothing lost.
    receipt = (await send(client, alice, room, "stream me please")).json()
    events = await read_sse(client, receipt["stream_url"], alice)
    deltas = [e for e in events if e[1] == "delta"]
    assert 1 <= len(deltas) <= 2, deltas
    assert [e[1] for e in events] == ["delta"] * len(deltas) + ["done"]
    full = "".join(json.loads(e[2])["text"] for e in deltas)
    assert full == json.loads(events[-1][2])["content"]
    assert full.startswith("Demo reply")


async def test_finished_reply_without_stream_is_replayed_from_the_database(
    client, app, alice, room
):
    receipt = (await send(client, alice, room)).json()
    final = await finished_reply(client, alice, receipt)
    await drop_reply_stream(app, receipt["reply_id"])
    events = await read_sse(client, receipt["stream_url"], alice)
    assert [e[1] for e in events] == ["delta", "done"]
    assert json.loads(events[0][2])["text"] == final["content"]
    assert json.loads(events[1][2]) == final


async def test_a_finished_reply_whose_final_event_never_reached_its_stream_ends_from_the_row(
    client, app, alice, room, monkeypatch
):
    # As a worker killed between its commit and the append leaves it: the row is final, the
    # stream has text but no final event. A quiet stream checks the row and ends with it.
    monkeypatch.setattr(replies, "READ_BLOCK_MS", 50)
    receipt = (await send(client, alice, room)).json()
    final = await finished_reply(client, alice, receipt)
    await drop_reply_stream(app, receipt["reply_id"])
    streams = app.state.services.reply_streams
    first = await streams.append(receipt["reply_id"], "delta", json.dumps({"text": "Demo"}))
    events = await read_sse(client, receipt["stream_url"], alice)
    assert [e[:2] for e in events] == [(first, "delta"), (first, "done")]
    assert json.loads(events[1][2]) == final
    # Resumed after the text: only the final message, under the id of the last event sent.
    resumed = await read_sse(client, receipt["stream_url"], alice, last_event_id=first)
    assert [e[:2] for e in resumed] == [(first, "done")]
    assert json.loads(resumed[0][2]) == final


@pytest.mark.parametrize("field", ["content", "message", "text"])
async def test_content_aliases(client, alice, room, field):
    response = await client.post(f"/chatroom/{room}/message", json={field: "hi"}, headers=alice)
    assert response.status_code == 202


@pytest.mark.parametrize("body", [{"content": ""}, {"content": "   \n "}, {}, {"content": 5}])
async def test_invalid_content_is_422_and_spends_nothing(client, app, alice, room, body):
    response = await client.post(f"/chatroom/{room}/message", json=body, headers=alice)
    assert response.status_code == 422
    assert await count_messages(app, room) == 0
    ok = await send(client, alice, room)
    assert ok.headers["X-RateLimit-Remaining"] == "4"


async def test_too_long_content(client, app, alice, room):
    response = await send(client, alice, room, "x" * 8001)
    assert response.status_code == 422
    assert response.json()["code"] == "message_too_long"
    assert (await send(client, alice, room, "x" * 8000)).status_code == 202


async def test_other_users_cannot_send_read_or_stream(client, alice, room):
    receipt = (await send(client, alice, room)).json()
    bob = bearer(await sign_in(client))
    assert (await send(client, bob, room)).status_code == 404
    for path in (f"/chatroom/{room}/messages/{receipt['reply_id']}", receipt["stream_url"]):
        response = await client.get(path, headers=bob)
        assert response.status_code == 404
        assert response.json()["code"] == "chatroom_not_found"
    bob_room = (await client.post("/chatroom", json={}, headers=bob)).json()["id"]
    cross = await client.get(f"/chatroom/{bob_room}/messages/{receipt['reply_id']}", headers=bob)
    assert cross.status_code == 404
    assert cross.json()["code"] == "message_not_found"


async def test_user_messages_have_no_stream(client, alice, room):
    receipt = (await send(client, alice, room)).json()
    response = await client.get(
        f"/chatroom/{room}/messages/{receipt['message_id']}/stream", headers=alice
    )
    assert response.status_code == 400
    assert response.json()["code"] == "not_a_reply"


async def test_idempotency_key_returns_the_first_receipt(client, app, alice, room):
    first = await send(client, alice, room, "once", **{"Idempotency-Key": "abc-123"})
    again = await send(client, alice, room, "once", **{"Idempotency-Key": "abc-123"})
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert await count_messages(app, room) == 2
    other = await send(client, alice, room, "twice", **{"Idempotency-Key": "abc-124"})
    assert other.json()["reply_id"] != first.json()["reply_id"]
    assert again.headers["X-RateLimit-Remaining"] == "4"


async def test_a_key_reused_for_another_message_is_refused(client, app, alice, room):
    first = await send(client, alice, room, "once", **{"Idempotency-Key": "reused"})
    assert first.status_code == 202
    # The same text with blanks around it is the same message: a retry.
    again = await send(client, alice, room, "  once ", **{"Idempotency-Key": "reused"})
    assert again.json() == first.json()
    other_room = (await client.post("/chatroom", json={"name": "b"}, headers=alice)).json()["id"]
    for room_id, text in ((room, "twice"), (other_room, "once")):
        refused = await send(client, alice, room_id, text, **{"Idempotency-Key": "reused"})
        assert refused.status_code == 422, refused.text
        assert refused.json()["code"] == "idempotency_key_reused"
    assert await count_messages(app, room) == 2
    assert await count_messages(app, other_room) == 0
    usage = (await client.get("/user/usage", headers=alice)).json()
    assert usage["used_today"] == 1


@pytest.mark.parametrize("key", [None, "nul-key"])
async def test_a_message_with_a_nul_character_is_422_and_stores_nothing(
    client, app, alice, room, key
):
    headers = {} if key is None else {"Idempotency-Key": key}
    response = await send(client, alice, room, "a\x00b", **headers)
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "validation_error"
    assert await count_messages(app, room) == 0


async def test_concurrent_sends_with_one_key_create_one_exchange(client, app, alice, room):
    responses = await asyncio.gather(
        *(send(client, alice, room, "same", **{"Idempotency-Key": "k1"}) for _ in range(10))
    )
    assert {r.status_code for r in responses} == {202}
    assert len({r.json()["reply_id"] for r in responses}) == 1
    assert await count_messages(app, room) == 2


async def test_idempotency_key_expires_after_a_day(client, app, alice, room, clock):
    number = (await client.get("/user/me", headers=alice)).json()["mobile_number"]
    first = (await send(client, alice, room, "a", **{"Idempotency-Key": "day"})).json()
    clock.advance(24 * 3600 + 1)
    alice = bearer(await sign_in(client, number))  # the old access token has expired
    second = (await send(client, alice, room, "a", **{"Idempotency-Key": "day"})).json()
    assert second["reply_id"] != first["reply_id"]


async def test_invalid_idempotency_key(client, alice, room):
    response = await send(client, alice, room, **{"Idempotency-Key": "x" * 256})
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_idempotency_key"


async def test_sixth_message_of_the_day_is_refused(client, app, alice, room, clock):
    number = (await client.get("/user/me", headers=alice)).json()["mobile_number"]
    for remaining in (4, 3, 2, 1, 0):
        response = await send(client, alice, room)
        assert response.status_code == 202
        assert response.headers["X-RateLimit-Remaining"] == str(remaining)
    refused = await send(client, alice, room)
    assert refused.status_code == 429
    assert refused.json()["code"] == "daily_limit_reached"
    assert refused.headers["Retry-After"] == str(14 * 3600)
    assert refused.headers["X-RateLimit-Remaining"] == "0"
    assert await count_messages(app, room) == 10
    clock.set(datetime(2026, 11, 23, 0, 0, 1, tzinfo=UTC))
    alice = bearer(await sign_in(client, number))
    assert (await send(client, alice, room)).status_code == 202


async def test_twenty_concurrent_sends_get_exactly_five(client, app, alice, room):
    responses = await asyncio.gather(*(send(client, alice, room, f"m{i}") for i in range(20)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [202] * 5 + [429] * 15
    assert await count_messages(app, room) == 10
    for response in responses:
        if response.status_code == 202:
            assert (await finished_reply(client, alice, response.json()))["status"] == "completed"


async def test_concurrent_sends_each_get_one_reply(client, app, alice):
    rooms = [
        (await client.post("/chatroom", json={}, headers=alice)).json()["id"] for _ in range(5)
    ]
    receipts = [
        r.json() for r in await asyncio.gather(*(send(client, alice, r, "q") for r in rooms))
    ]
    finals = await asyncio.gather(*(finished_reply(client, alice, r) for r in receipts))
    assert {f["status"] for f in finals} == {"completed"}
    for room_id in rooms:
        assert await count_messages(app, room_id) == 2


async def test_list_cache_is_invalidated_by_a_send(client, alice, room):
    await client.get("/chatroom", headers=alice)
    assert (await client.get("/chatroom", headers=alice)).headers["X-Cache"] == "HIT"
    await send(client, alice, room)
    listed = await client.get("/chatroom", headers=alice)
    assert listed.headers["X-Cache"] == "MISS"
    assert listed.json()["chatrooms"][0]["message_count"] == 2


async def _stuck_reply(app, room_id, clock, status: str, attempts: int) -> int:
    """A reply as a killed worker leaves it: `generating` (or `queued`) and not touched since."""
    old = clock.now() - timedelta(seconds=120)
    async with app.state.services.database.sessionmaker() as session:
        user_message = Message(
            chatroom_id=room_id,
            role="user",
            content="lost?",
            status="completed",
            attempts=0,
            created_at=old,
            updated_at=old,
            completed_at=old,
        )
        session.add(user_message)
        await session.flush()
        reply = Message(
            chatroom_id=room_id,
            role="assistant",
            content="partial",
            status=status,
            attempts=attempts,
            reply_to=user_message.id,
            created_at=old,
            updated_at=old,
        )
        session.add(reply)
        await session.commit()
        return reply.id


@pytest.mark.parametrize(("status", "attempts"), [("generating", 1), ("queued", 0)])
async def test_sweeper_finishes_a_stuck_reply_exactly_once(
    client, app, alice, room, clock, status, attempts
):
    reply_id = await _stuck_reply(app, room, clock, status, attempts)
    fresh = (await send(client, alice, room, "new")).json()  # not stale: left alone
    swept = await app.state.services.pipeline.sweep_once()
    assert swept == [reply_id]
    url = f"/chatroom/{room}/messages/{reply_id}/stream"
    events = await read_sse(client, url, alice)
    if status == "generating":
        assert events[0][1] == "reset"
    final = json.loads(events[-1][2])
    assert final["status"] == "completed"
    assert final["content"].startswith("Demo reply")
    async with app.state.services.database.sessionmaker() as session:
        row = await session.get(Message, reply_id)
        assert row.attempts == attempts + 1
        replies = (
            await session.execute(
                select(func.count()).select_from(Message).where(Message.reply_to == row.reply_to)
            )
        ).scalar_one()
    assert replies == 1
    assert (await finished_reply(client, alice, fresh))["status"] == "completed"
    assert await app.state.services.pipeline.sweep_once() == []


async def test_stopping_the_sweeper_lets_a_sweep_in_progress_finish(app):
    # A cancel inside a sweep's database call invalidated its connection, and a second cancel
    # during that connection's close left a task that never ended (the test run's event loop
    # then hung at its close): the sweeper is asked to stop between sweeps instead.
    # Sweeps 1 s apart (the shortest interval); the first, at start, goes through.
    settings = app.state.services.settings.model_copy(update={"reply_stale_seconds": 4})
    pipeline = InProcessReplyPipeline(settings, app.state.services.pipeline.generator)
    in_sweep, release = asyncio.Event(), asyncio.Event()
    finished: list[bool] = []
    sweeps = 0

    async def slow_sweep(**_: object) -> list[int]:
        nonlocal sweeps
        sweeps += 1
        if sweeps == 1:
            return []
        in_sweep.set()
        await release.wait()
        finished.append(True)
        return []

    pipeline.sweep_once = slow_sweep  # type: ignore[method-assign]
    await pipeline.start(run_sweeper=True)
    await asyncio.wait_for(in_sweep.wait(), 10)
    stopping = asyncio.create_task(pipeline.stop(grace_seconds=5))
    release.set()  # the stop runs first: it has the sweep in progress to deal with
    await asyncio.wait_for(stopping, 10)
    assert finished == [True]  # the sweep ran to its end, uncancelled


@pytest.mark.skipif(BACKEND != "production", reason="the jobs wait in Redis Streams")
async def test_sweeper_leaves_replies_whose_jobs_wait_behind_a_backlog(
    make_settings, clock, settings_overrides
):
    """A backlog older than REPLY_STALE_SECONDS is not doubled by the sweeper: a queued reply
    whose job still waits in the stream is left alone; one queued before the oldest waiting job
    (its job lost) is queued again."""
    application = create_app(make_settings(**settings_overrides), clock=clock)
    async with application.router.lifespan_context(application):  # an API process, no worker
        transport = httpx.ASGITransport(app=application, client=("198.51.100.9", 40002))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as api:
            clock.set(datetime.now(UTC))  # the app's times compared with the jobs' stream ids
            auth = bearer(await sign_in(api))
            room_id = (await api.post("/chatroom", json={"name": "q"}, headers=auth)).json()["id"]
            lost = await _stuck_reply(application, room_id, clock, "queued", 0)  # never queued
            clock.set(datetime.now(UTC))  # the sends' times: next to their jobs' stream ids
            receipts = [(await send(api, auth, room_id)).json() for _ in range(3)]
            assert all("reply_id" in r for r in receipts), receipts
            waiting = [r["reply_id"] for r in receipts]
            clock.advance(
                application.state.services.settings.reply_stale_seconds + 5
            )  # all stale now
            pipeline = application.state.services.pipeline
            assert await pipeline.sweep_once() == [lost]
            jobs = pipeline.jobs
            assert await jobs.redis.xlen(jobs.stream) == len(waiting) + 1
            # Once no job waits (the stream lost them: a Redis without persistence restarted),
            # every stale queued reply is queued again.
            await jobs.redis.delete(jobs.stream)
            await jobs.declare_group()  # as a worker declares it on reconnect
            clock.advance(application.state.services.settings.reply_stale_seconds + 5)
            assert sorted(await pipeline.sweep_once()) == sorted([lost, *waiting])


async def test_duplicate_delivery_is_a_no_op(client, app, alice, room):
    receipt = (await send(client, alice, room)).json()
    final = await finished_reply(client, alice, receipt)
    await app.state.services.pipeline.generator.run(receipt["reply_id"])
    await app.state.services.pipeline.enqueue(receipt["reply_id"])
    after = (
        await client.get(f"/chatroom/{room}/messages/{receipt['reply_id']}", headers=alice)
    ).json()
    assert after == final
    async with app.state.services.database.sessionmaker() as session:
        assert (await session.get(Message, receipt["reply_id"])).attempts == 1


class FailingProvider:
    name = "failing"
    model = "failing-1"

    def __init__(self, error: ProviderError | None, blocked: bool = False):
        self.error = error
        self.blocked = blocked
        self.calls = 0

    async def stream(self, conversation, options):
        self.calls += 1
        if self.error is not None:
            raise self.error
        yield Finished("safety", blocked=self.blocked)


@pytest.mark.parametrize(
    ("provider", "status", "error", "calls"),
    [
        (
            FailingProvider(ProviderError("provider_bad_request", "400", retryable=False)),
            "failed",
            "provider_bad_request",
            1,
        ),
        (
            FailingProvider(
                ProviderError("provider_unavailable", "503", retryable=True, retry_after=0.001)
            ),
            "failed",
            "provider_unavailable",
            4,
        ),
        (FailingProvider(None, blocked=True), "blocked", "safety_block", 1),
    ],
)
async def test_failed_or_blocked_replies_give_the_slot_back(
    client, app, alice, room, provider, status, error, calls
):
    # A provider that fails (a fake of the rule's input; the real SDKs are tested elsewhere),
    # in whichever process produces replies.
    app.state.services.pipeline.generator.provider = provider
    if app.state.services.settings.is_production_mode:
        app.state.worker.pipeline.generator.provider = provider
    response = await send(client, alice, room)
    assert response.headers["X-RateLimit-Remaining"] == "4"
    events = await read_sse(client, response.json()["stream_url"], alice)
    assert events[-1][1] == "error"
    final = json.loads(events[-1][2])
    assert final["status"] == status
    assert final["error"] == error
    assert final["content"] == ""
    assert provider.calls == calls
    async with app.state.services.database.sessionmaker() as session:
        used = (await session.execute(select(DailyUsage.count))).scalar_one()
    assert used == 0
