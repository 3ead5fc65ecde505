"""Replies in flight together are claimed and finished by one statement each (group commit,
chat/generation.py), and each still completes exactly once."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.helpers import bearer, insert_queued_reply, read_sse, sign_in


@pytest.fixture
def settings_overrides():
    return {"send_per_minute": 100, "basic_daily_limit": 100}


async def test_replies_that_meet_are_claimed_together_and_each_completes_once(client, app):
    alice = bearer(await sign_in(client))
    queued: list[tuple[int, int]] = []
    for n in range(6):
        room = (await client.post("/chatroom", json={"name": f"r{n}"}, headers=alice)).json()["id"]
        sent = await client.post(f"/chatroom/{room}/message", json={"content": "hi"}, headers=alice)
        assert sent.status_code == 202, sent.json()
        await read_sse(client, sent.json()["stream_url"], alice)
        # A second reply to the same message, written as queued behind the workers' back.
        queued.append((room, await insert_queued_reply(app, room, sent.json()["message_id"])))
    generator = app.state.services.pipeline.generator
    claims, finishes = generator.claims.items, generator.finishes.items
    batches = generator.claims.batches
    ids = [reply_id for _, reply_id in queued]
    # Each reply's job started at once, the first one delivered twice: the duplicate meets its
    # twin in the batch and does nothing.
    await asyncio.gather(*(generator.run(reply_id) for reply_id in [*ids, ids[0]]))
    assert generator.claims.items - claims == len(ids)
    assert generator.claims.batches - batches == 1  # all six in one statement
    assert generator.finishes.items - finishes == len(ids)
    for room, reply_id in queued:
        url = f"/chatroom/{room}/messages/{reply_id}/stream"
        events = await read_sse(client, url, alice)
        assert [e[1] for e in events].count("done") == 1
        final = json.loads(events[-1][2])
        assert final["status"] == "completed"
        assert final["content"]
        assert len(final["sibling_ids"]) == 2
