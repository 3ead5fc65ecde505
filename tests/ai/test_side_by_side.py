"""Gemini and an OpenAI-compatible server configured at once, in one app: each room is answered
by its own model's provider, with its options on the wire (the real SDKs against the fake
servers on loopback), and the reply records the model that answered."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.ai.fake_gemini import API_KEY, FakeGemini
from tests.ai.fake_openai import FakeOpenAI
from tests.helpers import bearer, read_sse, sign_in

GEMINI_MODEL = "gemini-2.5-flash"
OPENAI_MODEL = "llama-3.1-8b"


@pytest.fixture
def gemini(gemini_server: FakeGemini) -> FakeGemini:
    return gemini_server


@pytest.fixture
def settings_overrides(gemini: FakeGemini, openai_server: FakeOpenAI) -> dict[str, Any]:
    return {
        "gemini_api_key": API_KEY,
        "gemini_model": GEMINI_MODEL,
        "gemini_base_url": gemini.url,
        "openai_base_url": openai_server.url + "/v1",
        "openai_model": "gpt-4o-mini",
        "openai_models": [OPENAI_MODEL],
        "ai_timeout_seconds": 3,
    }


@pytest.fixture
async def alice(client):
    return bearer(await sign_in(client))


async def exchange(client, auth, room_id: int, content: str) -> dict[str, Any]:
    """Send, read the stream to its end: the final message (stored alike)."""
    response = await client.post(
        f"/chatroom/{room_id}/message", json={"content": content}, headers=auth
    )
    assert response.status_code == 202, response.text
    events = await read_sse(client, response.json()["stream_url"], auth)
    assert events[-1][1] == "done", events
    final: dict[str, Any] = json.loads(events[-1][2])
    stored = await client.get(f"/chatroom/{room_id}/messages/{final['id']}", headers=auth)
    assert stored.json() == final
    return final


async def test_each_room_is_answered_by_its_models_provider(client, alice, gemini, openai_server):
    models = (await client.get("/models", headers=alice)).json()
    assert models["default"] == GEMINI_MODEL
    assert [(m["id"], m["provider"]) for m in models["models"]] == [
        (GEMINI_MODEL, "gemini"),
        ("gpt-4o-mini", "openai"),
        (OPENAI_MODEL, "openai"),
        ("demo", "demo"),
        ("demo-pro", "demo"),
    ]
    on_gemini = (
        await client.post("/chatroom", json={"name": "g", "temperature": 0.7}, headers=alice)
    ).json()
    on_llama = (
        await client.post("/chatroom", json={"name": "o", "model": OPENAI_MODEL}, headers=alice)
    ).json()
    changed = await client.patch(
        f"/chatroom/{on_llama['id']}", json={"temperature": 0.3}, headers=alice
    )
    assert changed.status_code == 200, changed.text

    first = await exchange(client, alice, on_gemini["id"], "Hi Gemini")
    second = await exchange(client, alice, on_llama["id"], "Hi llama")
    assert (first["content"], first["model"]) == ("Hello from Gemini.", GEMINI_MODEL)
    assert (second["content"], second["model"]) == ("Hello from the fake.", OPENAI_MODEL)

    # Each server was asked exactly its room's question, with its room's temperature.
    [asked_gemini] = gemini.streams
    assert asked_gemini.model == GEMINI_MODEL
    assert asked_gemini.turns == [("user", "Hi Gemini")]
    assert asked_gemini.generation_config["temperature"] == 0.7
    [asked_openai] = openai_server.completions
    assert asked_openai.body["model"] == OPENAI_MODEL
    assert asked_openai.body["messages"] == [{"role": "user", "content": "Hi llama"}]
    assert asked_openai.body["temperature"] == 0.3


async def test_a_room_switched_to_another_provider_goes_on_there(
    client, alice, gemini, openai_server
):
    room = (await client.post("/chatroom", json={}, headers=alice)).json()  # to be titled
    before = await exchange(client, alice, room["id"], "first")
    assert before["model"] == GEMINI_MODEL
    switched = await client.patch(
        f"/chatroom/{room['id']}", json={"model": OPENAI_MODEL}, headers=alice
    )
    assert switched.json()["model"] == OPENAI_MODEL
    after = await exchange(client, alice, room["id"], "second")
    assert after["model"] == OPENAI_MODEL
    # The new model is given the conversation so far, and no temperature (none was set).
    [asked] = openai_server.completions
    assert asked.body["messages"] == [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "Hello from Gemini."},
        {"role": "user", "content": "second"},
    ]
    assert "temperature" not in asked.body
    assert len(gemini.streams) == 1
    # The title came from the default model, with the first exchange.
    assert len(gemini.plain_calls) == 1
    titled = (await client.get(f"/chatroom/{room['id']}", headers=alice)).json()
    assert titled["name"] == "Trip Ideas For Paris"
    assert openai_server.plain_completions == []
