"""Thoughts with the demo model and a gated provider: the `thought` events, the reply's parts,
and a cancel that keeps the thoughts streamed so far (no provider needed)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

import pytest

from gemini_backend.ai.base import Delta, Finished, GenerationOptions, Thought, Usage
from tests.helpers import bearer, read_sse, sign_in


def generators(app):
    found = [app.state.services.pipeline.generator]
    if getattr(app.state, "worker", None) is not None:
        found.append(app.state.worker.pipeline.generator)
    return found


class DemoWithOptions:
    """The app's demo model with fixed options (rooms do not carry them yet)."""

    def __init__(self, demo, options: GenerationOptions) -> None:
        self.demo, self.options = demo, options
        self.name, self.model = demo.name, demo.model

    def stream(self, conversation, options):
        return self.demo.stream(conversation, replace(options, thinking=self.options.thinking))

    async def title(self, first_message):
        return await self.demo.title(first_message)


class ThinkingThenGated:
    name = "gated"
    model = "gated-1"

    def __init__(self) -> None:
        self.thought_sent = asyncio.Event()
        self.gate = asyncio.Event()

    async def stream(self, conversation, options):
        yield Thought("First, ")
        yield Thought("the weather.")
        self.thought_sent.set()
        await self.gate.wait()
        yield Delta("late")
        yield Finished("stop", Usage(1, 2, 3))

    async def title(self, first_message):
        return "Gated"


@pytest.fixture
async def alice(client):
    return bearer(await sign_in(client))


@pytest.fixture
async def room(client, alice):
    return (await client.post("/chatroom", json={"name": "r"}, headers=alice)).json()["id"]


async def send(client, auth, room_id, content="Goa in May?"):
    response = await client.post(
        f"/chatroom/{room_id}/message", json={"content": content}, headers=auth
    )
    assert response.status_code == 202, response.text
    return response.json()


@pytest.mark.parametrize("thinking", ["high", 1024])
async def test_the_demo_model_thinks_first_when_asked(client, app, alice, room, thinking):
    for generator in generators(app):
        generator.provider = DemoWithOptions(
            generator.provider, GenerationOptions(thinking=thinking)
        )
    receipt = await send(client, alice, room)
    events = await read_sse(client, receipt["stream_url"], alice)
    assert events[0][1] == "thought"
    assert json.loads(events[0][2]) == {"text": 'Thinking about: "Goa in May?"'}
    assert [e for _i, e, _d in events[1:-1]] == ["delta"] * (len(events) - 2)
    final = json.loads(events[-1][2])
    assert final["content"].startswith("Demo reply")
    assert "Thinking" not in final["content"]
    assert final["parts"] == [
        {"type": "thought", "text": 'Thinking about: "Goa in May?"'},
        {"type": "text", "text": final["content"]},
    ]
    assert final["usage"]["thinking_tokens"] > 0


async def test_the_demo_model_does_not_think_when_off(client, app, alice, room):
    for generator in generators(app):
        generator.provider = DemoWithOptions(generator.provider, GenerationOptions(thinking="off"))
    receipt = await send(client, alice, room)
    events = await read_sse(client, receipt["stream_url"], alice)
    assert "thought" not in {e for _i, e, _d in events}
    assert json.loads(events[-1][2])["usage"]["thinking_tokens"] == 0


async def test_a_cancel_keeps_the_thoughts_so_far(client, app, alice, room):
    provider = ThinkingThenGated()
    for generator in generators(app):
        generator.provider = provider
        generator.cancel_poll_seconds = 0
    receipt = await send(client, alice, room)
    await asyncio.wait_for(provider.thought_sent.wait(), 10)
    url = f"/chatroom/{room}/messages/{receipt['reply_id']}/cancel"
    assert (await client.post(url, headers=alice)).status_code == 200
    provider.gate.set()
    events = await read_sse(client, receipt["stream_url"], alice)
    final = json.loads(events[-1][2])
    assert final["status"] == "cancelled"
    # The chunk that arrives with the cancel is kept; nothing after it is asked for.
    assert final["content"] == "late"
    assert final["finish_reason"] is None
    assert final["parts"] == [
        {"type": "thought", "text": "First, the weather."},
        {"type": "text", "text": "late"},
    ]
    streamed = "".join(json.loads(d)["text"] for _i, e, d in events if e == "thought")
    assert streamed == "First, the weather."
