"""Cancel, retry and automatic titles."""

from __future__ import annotations

import asyncio
import json

import pytest
from sqlalchemy import select

from gemini_backend.ai.base import Delta, Finished, ProviderError, Usage
from gemini_backend.quota.models import DailyUsage
from tests.helpers import bearer, insert_queued_reply, read_sse, sign_in


@pytest.fixture
async def alice(client):
    return bearer(await sign_in(client))


@pytest.fixture
async def room(client, alice):
    return (await client.post("/chatroom", json={"name": "r"}, headers=alice)).json()["id"]


def generators(app):
    """The reply generators of every process of the test (the API's, and the worker's)."""
    found = [app.state.services.pipeline.generator]
    if getattr(app.state, "worker", None) is not None:
        found.append(app.state.worker.pipeline.generator)
    return found


def use_provider(app, provider) -> None:
    for generator in generators(app):
        generator.provider = provider
        generator.cancel_poll_seconds = 0  # look for a cancel request at every chunk


class GatedProvider:
    """Streams one chunk, then waits for the test to open the gate, then streams more."""

    name = "gated"
    model = "gated-1"

    def __init__(self) -> None:
        self.first_chunk_sent = asyncio.Event()
        self.gate = asyncio.Event()

    async def stream(self, conversation, options):
        yield Delta("partial ")
        self.first_chunk_sent.set()
        await self.gate.wait()
        for word in ("more ", "words ", "here"):
            yield Delta(word)
        yield Finished("stop", Usage(1, 4, 0))

    async def title(self, first_message: str) -> str:
        return "Gated"


async def send(client, auth, room_id, content="hi"):
    response = await client.post(
        f"/chatroom/{room_id}/message", json={"content": content}, headers=auth
    )
    assert response.status_code == 202, response.text
    return response.json()


async def test_cancel_a_generating_reply_keeps_the_partial_text(client, app, alice, room):
    provider = GatedProvider()
    use_provider(app, provider)
    receipt = await send(client, alice, room)
    await asyncio.wait_for(provider.first_chunk_sent.wait(), 10)
    url = f"/chatroom/{room}/messages/{receipt['reply_id']}/cancel"
    response = await client.post(url, headers=alice)
    assert response.status_code == 200
    assert response.json()["id"] == receipt["reply_id"]
    provider.gate.set()
    events = await read_sse(client, receipt["stream_url"], alice)
    assert events[-1][1] == "error"
    final = json.loads(events[-1][2])
    assert final["status"] == "cancelled"
    assert final["error"] == "cancelled"
    assert final["content"].startswith("partial ")
    assert final["content"] != "partial more words here"
    # Cancelling again answers the same; a cancel does not give the slot back.
    again = await client.post(url, headers=alice)
    assert again.status_code == 200
    assert again.json()["status"] == "cancelled"
    async with app.state.services.database.sessionmaker() as session:
        assert (await session.execute(select(DailyUsage.count))).scalar_one() == 1


class CountingGatedProvider(GatedProvider):
    """A GatedProvider that counts the chunks it streamed after the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.after_gate = 0
        self.closed = asyncio.Event()

    async def stream(self, conversation, options):
        try:
            yield Delta("partial ")
            self.first_chunk_sent.set()
            await self.gate.wait()
            for word in ("more ", "words ", "here"):
                yield Delta(word)
                self.after_gate += 1
            yield Finished("stop", Usage(1, 4, 0))
        finally:
            self.closed.set()


async def test_deleting_a_room_stops_its_generating_reply(client, app, alice, room):
    # Without the stop, the worker streamed the whole reply (paying the provider for it) into
    # a room that no longer exists.
    provider = CountingGatedProvider()
    use_provider(app, provider)
    await send(client, alice, room)
    await asyncio.wait_for(provider.first_chunk_sent.wait(), 10)
    assert (await client.delete(f"/chatroom/{room}", headers=alice)).status_code == 204
    provider.gate.set()
    await asyncio.wait_for(provider.closed.wait(), 10)
    assert provider.after_gate == 0  # stopped at the first chunk after the delete
    assert (await client.get(f"/chatroom/{room}", headers=alice)).status_code == 404


async def test_cancel_a_queued_reply(client, app, alice, room):
    provider = GatedProvider()
    use_provider(app, provider)
    first = await send(client, alice, room, "first")
    await asyncio.wait_for(provider.first_chunk_sent.wait(), 10)
    # While the first reply holds the provider, cancel one that no worker has claimed yet:
    # write it directly as queued to be sure no worker races the cancel.
    # Answering no message: the first's reply is in progress, and a message has one at a time.
    queued_id = await insert_queued_reply(app, room, None)
    response = await client.post(f"/chatroom/{room}/messages/{queued_id}/cancel", headers=alice)
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    events = await read_sse(client, f"/chatroom/{room}/messages/{queued_id}/stream", alice)
    assert [e[1] for e in events] == ["error"]
    provider.gate.set()
    done = await read_sse(client, first["stream_url"], alice)
    assert json.loads(done[-1][2])["status"] == "completed"
    # A worker receiving the cancelled reply's job later does nothing.
    await app.state.services.pipeline.generator.run(queued_id)
    got = await client.get(f"/chatroom/{room}/messages/{queued_id}", headers=alice)
    assert got.json()["status"] == "cancelled"


async def test_cancel_a_finished_reply_is_409(client, alice, room):
    receipt = await send(client, alice, room)
    await read_sse(client, receipt["stream_url"], alice)
    url = f"/chatroom/{room}/messages/{receipt['reply_id']}/cancel"
    response = await client.post(url, headers=alice)
    assert response.status_code == 409
    assert response.json()["code"] == "reply_already_finished"
    user_message = f"/chatroom/{room}/messages/{receipt['message_id']}/cancel"
    assert (await client.post(user_message, headers=alice)).json()["code"] == "not_a_reply"


class FailOnceProvider:
    name = "flaky"
    model = "flaky-1"

    def __init__(self) -> None:
        self.calls = 0

    async def stream(self, conversation, options):
        self.calls += 1
        if self.calls == 1:
            raise ProviderError("provider_bad_request", "400", retryable=False)
        yield Delta("second time lucky")
        yield Finished("stop")

    async def title(self, first_message: str) -> str:
        return "t"


async def test_retry_makes_a_new_reply_to_the_same_message(client, app, alice, room):
    use_provider(app, FailOnceProvider())
    receipt = await send(client, alice, room, "please")
    failed = await read_sse(client, receipt["stream_url"], alice)
    assert json.loads(failed[-1][2])["status"] == "failed"
    url = f"/chatroom/{room}/messages/{receipt['reply_id']}/retry"
    response = await client.post(url, headers=alice)
    assert response.status_code == 202, response.text
    retry = response.json()
    assert retry["message_id"] == receipt["message_id"]
    assert retry["reply_id"] != receipt["reply_id"]
    assert retry["reply"]["reply_to"] == receipt["message_id"]
    assert response.headers["X-RateLimit-Remaining"] == "4"  # the failed one gave its slot back
    done = await read_sse(client, retry["stream_url"], alice)
    final = json.loads(done[-1][2])
    assert final["status"] == "completed"
    assert final["content"] == "second time lucky"
    # Retrying by the user message's id works too, once nothing is in progress.
    again = await client.post(
        f"/chatroom/{room}/messages/{receipt['message_id']}/retry", headers=alice
    )
    assert again.status_code == 202


async def test_retry_while_a_reply_is_in_progress_is_409(client, app, alice, room):
    provider = GatedProvider()
    use_provider(app, provider)
    receipt = await send(client, alice, room)
    await asyncio.wait_for(provider.first_chunk_sent.wait(), 10)
    url = f"/chatroom/{room}/messages/{receipt['reply_id']}/retry"
    response = await client.post(url, headers=alice)
    assert response.status_code == 409
    assert response.json()["code"] == "reply_in_progress"
    provider.gate.set()
    await read_sse(client, receipt["stream_url"], alice)


@pytest.mark.parametrize("settings_overrides", [{"basic_daily_limit": 100}])
async def test_concurrent_retries_of_one_message_queue_one_reply(client, app, alice, room):
    # The check for a reply in progress and the insert of the new one were two steps: four
    # concurrent retries all passed the check, and each queued a reply and spent a slot.
    for trial in range(3):
        provider = GatedProvider()
        provider.gate.set()
        use_provider(app, provider)
        receipt = await send(client, alice, room, f"trial {trial}")
        await read_sse(client, receipt["stream_url"], alice)
        held = GatedProvider()  # the new reply stays in progress
        use_provider(app, held)
        url = f"/chatroom/{room}/messages/{receipt['reply_id']}/retry"
        responses = await asyncio.gather(*(client.post(url, headers=alice) for _ in range(4)))
        statuses = sorted(r.status_code for r in responses)
        assert statuses == [202, 409, 409, 409], [r.text for r in responses]
        assert {r.json()["code"] for r in responses if r.status_code == 409} == {
            "reply_in_progress"
        }
        (winner,) = (r.json() for r in responses if r.status_code == 202)
        usage = (await client.get("/chatroom/usage", headers=alice)).json()
        assert usage["used_today"] == 2 * (trial + 1)  # the send and one retry per trial
        tree = (await client.get(f"/chatroom/{room}/tree", headers=alice)).json()
        replies = [m for m in tree["messages"] if m["reply_to"] == receipt["message_id"]]
        assert [m["id"] for m in replies] == [receipt["reply_id"], winner["reply_id"]]
        held.gate.set()
        done = await read_sse(client, winner["stream_url"], alice)
        assert json.loads(done[-1][2])["status"] == "completed"


async def test_retry_needs_a_room_of_mine(client, alice, room):
    receipt = await send(client, alice, room)
    await read_sse(client, receipt["stream_url"], alice)
    bob = bearer(await sign_in(client))
    url = f"/chatroom/{room}/messages/{receipt['reply_id']}/retry"
    assert (await client.post(url, headers=bob)).status_code == 404
    assert (await client.post(f"/chatroom/{room}/messages/999999/retry", headers=alice)).json()[
        "code"
    ] == "message_not_found"


async def test_an_unnamed_room_gets_a_title_from_its_first_exchange(client, alice):
    room = (await client.post("/chatroom", json={}, headers=alice)).json()
    assert room["name"] == "New chat"
    await client.get("/chatroom", headers=alice)  # cache the list
    receipt = await send(client, alice, room["id"], "Plan a weekend trip to the mountains please")
    await read_sse(client, receipt["stream_url"], alice)
    detail = (await client.get(f"/chatroom/{room['id']}", headers=alice)).json()
    assert detail["name"] == detail["title"] == "Plan a weekend trip to the"
    listed = await client.get("/chatroom", headers=alice)
    assert listed.json()["chatrooms"][0]["name"] == "Plan a weekend trip to the"
    # Only the first exchange names it; a later one does not rename it.
    second = await send(client, alice, room["id"], "Something else entirely now")
    await read_sse(client, second["stream_url"], alice)
    detail = (await client.get(f"/chatroom/{room['id']}", headers=alice)).json()
    assert detail["name"] == "Plan a weekend trip to the"


async def test_a_named_room_keeps_its_name(client, alice, room):
    receipt = await send(client, alice, room, "rename me?")
    await read_sse(client, receipt["stream_url"], alice)
    assert (await client.get(f"/chatroom/{room}", headers=alice)).json()["name"] == "r"


async def test_a_user_rename_wins_over_the_title(client, alice):
    room = (await client.post("/chatroom", json={}, headers=alice)).json()["id"]
    await client.patch(f"/chatroom/{room}", json={"name": "Mine"}, headers=alice)
    receipt = await send(client, alice, room, "anything at all here")
    await read_sse(client, receipt["stream_url"], alice)
    assert (await client.get(f"/chatroom/{room}", headers=alice)).json()["name"] == "Mine"
