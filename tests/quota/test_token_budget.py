"""The monthly token budget: reservations taken with the send, settled by the reply's end
(exactly once), given back by failures, cancels and room deletions, refused at the budget."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from gemini_backend.ai.base import Delta, Finished, ProviderError, Usage
from gemini_backend.chat.models import Message
from gemini_backend.quota.models import TokenReservation
from tests.helpers import bearer, read_sse, sign_in

BUDGET = 10
RESERVE = 3
SPENT = 6  # what each reply of MeteredProvider costs: 2 prompt + 3 output + 1 thinking
MONTH_END = datetime(2026, 12, 1, tzinfo=UTC)


class MeteredProvider:
    """Replies "metered" and reports SPENT tokens; `gated`: after the first chunk, waits for
    the test to open the gate; `fail`: fails before any chunk instead."""

    name = "metered"
    model = "metered-1"

    def __init__(self, *, gated: bool = False, fail: bool = False) -> None:
        self.started = asyncio.Event()
        self.gate = asyncio.Event()
        if not gated:
            self.gate.set()
        self.fail = fail

    async def stream(self, conversation, options):
        if self.fail:
            raise ProviderError("provider_error", "broken", retryable=False)
        yield Delta("metered ")
        self.started.set()
        await self.gate.wait()
        yield Delta("reply")
        yield Finished("stop", Usage(2, 3, 1, 0))

    async def title(self, first_message: str) -> str:
        return "Metered"


def use_provider(app, provider) -> None:
    generators = [app.state.services.pipeline.generator]
    if getattr(app.state, "worker", None) is not None:
        generators.append(app.state.worker.pipeline.generator)
    for generator in generators:
        generator.provider = provider
        generator.cancel_poll_seconds = 0


@pytest.fixture
def settings_overrides():
    return {
        "monthly_token_budget_basic": BUDGET,
        "token_budget_reserve": RESERVE,
        "basic_daily_limit": 100,
        "send_per_minute": 100,
    }


@pytest.fixture
async def alice(client):
    return bearer(await sign_in(client))


@pytest.fixture
async def room(client, alice):
    return (await client.post("/chatroom", json={"name": "t"}, headers=alice)).json()["id"]


async def send(client, auth, room_id, content="hi"):
    return await client.post(
        f"/chatroom/{room_id}/message", json={"content": content}, headers=auth
    )


async def finished(client, auth, receipt) -> dict:
    events = await read_sse(client, receipt["stream_url"], auth)
    return json.loads(events[-1][2])


async def month(client, auth) -> dict:
    response = await client.get("/user/usage", headers=auth)
    assert response.status_code == 200
    return response.json()["monthly_tokens"]


async def reservations(app) -> int:
    async with app.state.services.database.sessionmaker() as session:
        found = select(func.count()).select_from(TokenReservation)
        return int((await session.execute(found)).scalar_one())


def seconds_to_month_end(clock) -> str:
    return str(int((MONTH_END - clock.now()).total_seconds()))


async def test_a_reply_replaces_its_reservation_by_the_tokens_reported(
    client, app, alice, room, clock
):
    use_provider(app, MeteredProvider())
    accepted = await send(client, alice, room)
    assert accepted.status_code == 202
    assert accepted.headers["X-TokenBudget-Limit"] == str(BUDGET)
    assert accepted.headers["X-TokenBudget-Remaining"] == str(BUDGET - RESERVE)
    assert accepted.headers["X-TokenBudget-Reset"] == seconds_to_month_end(clock)
    assert accepted.headers["X-RateLimit-Remaining"] == "99"  # the daily headers stay
    reply = await finished(client, alice, accepted.json())
    assert reply["status"] == "completed"
    usage = await client.get("/user/usage", headers=alice)
    assert usage.json()["monthly_tokens"] == {
        "limit": BUDGET,
        "used": SPENT,
        "reserved": 0,
        "remaining": BUDGET - SPENT,
        "resets_at": "2026-12-01T00:00:00Z",
    }
    assert usage.headers["X-TokenBudget-Remaining"] == str(BUDGET - SPENT)
    status = (await client.get("/subscription/status", headers=alice)).json()
    assert status["monthly_tokens"] == usage.json()["monthly_tokens"]
    assert await reservations(app) == 0


async def test_a_spent_budget_refuses_the_send_and_stores_nothing(client, app, alice, room, clock):
    use_provider(app, MeteredProvider())
    for _ in range(2):  # 6, then 12 tokens: the second passed at 6 < 10
        assert (await finished(client, alice, (await send(client, alice, room)).json()))[
            "status"
        ] == "completed"
    before = (await client.get(f"/chatroom/{room}", headers=alice)).json()
    refused = await send(client, alice, room)
    assert refused.status_code == 429
    assert refused.json()["code"] == "token_budget_exceeded"
    assert refused.headers["Retry-After"] == seconds_to_month_end(clock)
    assert refused.headers["X-TokenBudget-Remaining"] == "0"
    assert refused.headers["X-TokenBudget-Reset"] == seconds_to_month_end(clock)
    after = (await client.get(f"/chatroom/{room}", headers=alice)).json()
    assert after["message_count"] == before["message_count"]
    usage = (await client.get("/user/usage", headers=alice)).json()
    assert usage["used_today"] == 2  # the refused send's daily slot rolled back with it
    assert usage["monthly_tokens"]["used"] == 2 * SPENT
    assert usage["monthly_tokens"]["remaining"] == 0
    # A retry and an edit are sends too.
    messages = (await client.get(f"/chatroom/{room}/messages", headers=alice)).json()["messages"]
    last_user = [m for m in messages if m["role"] == "user"][-1]
    retry = await client.post(f"/chatroom/{room}/messages/{last_user['id']}/retry", headers=alice)
    assert (retry.status_code, retry.json()["code"]) == (429, "token_budget_exceeded")
    edit = await client.post(
        f"/chatroom/{room}/messages/{last_user['id']}/edit",
        json={"content": "again"},
        headers=alice,
    )
    assert (edit.status_code, edit.json()["code"]) == (429, "token_budget_exceeded")
    # The 1st of the next month (UTC) starts afresh.
    number = (await client.get("/user/me", headers=alice)).json()["mobile_number"]
    clock.set(MONTH_END)
    alice = bearer(await sign_in(client, number))
    accepted = await send(client, alice, room)
    assert accepted.status_code == 202
    assert accepted.headers["X-TokenBudget-Remaining"] == str(BUDGET - RESERVE)


async def test_a_failed_reply_gives_its_reservation_back(client, app, alice, room):
    use_provider(app, MeteredProvider(fail=True))
    reply = await finished(client, alice, (await send(client, alice, room)).json())
    assert reply["status"] == "failed"
    assert await month(client, alice) == {
        "limit": BUDGET,
        "used": 0,
        "reserved": 0,
        "remaining": BUDGET,
        "resets_at": "2026-12-01T00:00:00Z",
    }
    assert await reservations(app) == 0


async def test_a_cancelled_reply_settles_what_it_reported(client, app, alice, room):
    provider = MeteredProvider(gated=True)
    use_provider(app, provider)
    receipt = (await send(client, alice, room)).json()
    await asyncio.wait_for(provider.started.wait(), 10)
    assert (await month(client, alice))["reserved"] == RESERVE
    cancel = f"/chatroom/{room}/messages/{receipt['reply_id']}/cancel"
    assert (await client.post(cancel, headers=alice)).status_code == 200
    provider.gate.set()
    reply = await finished(client, alice, receipt)
    assert reply["status"] == "cancelled"
    tokens = await month(client, alice)
    assert (tokens["reserved"], tokens["used"]) == (0, 0)  # a cancel reports no usage


async def test_deleting_a_room_gives_its_replies_reservations_back(client, app, alice, room):
    provider = MeteredProvider(gated=True)
    use_provider(app, provider)
    assert (await send(client, alice, room)).status_code == 202
    await asyncio.wait_for(provider.started.wait(), 10)
    other = (await client.post("/chatroom", json={"name": "u"}, headers=alice)).json()["id"]
    kept = (await send(client, alice, other)).json()
    assert (await month(client, alice))["reserved"] == 2 * RESERVE
    assert (await client.delete(f"/chatroom/{room}", headers=alice)).status_code == 204
    tokens = await month(client, alice)
    assert (tokens["reserved"], tokens["used"]) == (RESERVE, 0)  # the other room's reply's
    provider.gate.set()  # the deleted reply's finish then finds no row, and nothing to settle
    assert (await finished(client, alice, kept))["status"] == "completed"
    tokens = await month(client, alice)
    assert (tokens["reserved"], tokens["used"]) == (0, SPENT)
    assert await reservations(app) == 0


async def test_a_swept_reply_settles_once(client, app, alice, room, clock):
    provider = MeteredProvider(gated=True)
    use_provider(app, provider)
    receipt = (await send(client, alice, room)).json()
    await asyncio.wait_for(provider.started.wait(), 10)
    clock.advance(app.state.services.settings.reply_stale_seconds + 1)
    assert await app.state.services.pipeline.sweep_once() == [receipt["reply_id"]]
    provider.gate.set()  # both attempts finish; the first one is superseded
    reply = await finished(client, alice, receipt)
    assert reply["status"] == "completed"
    async with app.state.services.database.sessionmaker() as session:
        row = await session.get(Message, receipt["reply_id"])
        assert row is not None
        assert row.attempts == 2
    tokens = await month(client, alice)
    assert (tokens["reserved"], tokens["used"]) == (0, SPENT)


async def test_concurrent_sends_take_exactly_the_budget(client, app, alice, room):
    """12 sends at once against 10 tokens with 3 reserved each: the sends that find 0, 3, 6
    and 9 tokens held pass, the rest are refused; nothing settles before the gate opens."""
    provider = MeteredProvider(gated=True)
    use_provider(app, provider)
    rooms = [room] + [
        (await client.post("/chatroom", json={"name": f"c{n}"}, headers=alice)).json()["id"]
        for n in range(3)
    ]
    results = await asyncio.gather(*(send(client, alice, rooms[n % 4], f"m{n}") for n in range(12)))
    codes = sorted(r.status_code for r in results)
    assert codes == [202] * 4 + [429] * 8, [r.text for r in results]
    assert {r.json()["code"] for r in results if r.status_code == 429} == {"token_budget_exceeded"}
    tokens = await month(client, alice)
    assert (tokens["reserved"], tokens["used"], tokens["remaining"]) == (4 * RESERVE, 0, 0)
    provider.gate.set()
    for accepted in (r for r in results if r.status_code == 202):
        assert (await finished(client, alice, accepted.json()))["status"] == "completed"
    tokens = await month(client, alice)
    assert (tokens["reserved"], tokens["used"]) == (0, 4 * SPENT)
    usage = (await client.get("/user/usage", headers=alice)).json()
    assert usage["used_today"] == 4
    assert await reservations(app) == 0


class TestBudgetOnlyForBasic:
    """A budget for one tier turns the accounting on for everyone: an unlimited tier's
    tokens are counted, with no limit and no X-TokenBudget-* headers."""

    @pytest.fixture
    def settings_overrides(self):
        return {"monthly_token_budget_pro": 1000, "token_budget_reserve": RESERVE}

    async def test_basic_is_unlimited_but_counted(self, client, app, alice, room):
        use_provider(app, MeteredProvider())
        accepted = await send(client, alice, room)
        assert accepted.status_code == 202
        assert not any(h.startswith("x-tokenbudget") for h in accepted.headers)
        await finished(client, alice, accepted.json())
        assert await month(client, alice) == {
            "limit": None,
            "used": SPENT,
            "reserved": 0,
            "remaining": None,
            "resets_at": "2026-12-01T00:00:00Z",
        }


class TestNoBudget:
    @pytest.fixture
    def settings_overrides(self):
        return {}

    async def test_no_budget_no_accounting(self, client, app, alice, room):
        use_provider(app, MeteredProvider())
        accepted = await send(client, alice, room)
        assert not any(h.startswith("x-tokenbudget") for h in accepted.headers)
        await finished(client, alice, accepted.json())
        assert await month(client, alice) is None
        status = (await client.get("/subscription/status", headers=alice)).json()
        assert status["monthly_tokens"] is None
        assert await reservations(app) == 0
