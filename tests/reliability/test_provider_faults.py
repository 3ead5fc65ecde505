"""Provider faults during load: 20% of the provider's answers are a 429, a 5xx, a hang or a
stream that breaks part-way (the project's fake OpenAI-compatible server on loopback). Every
reply still ends `completed` or `failed` with an error code, none is left hanging, and the
provider is called at most AI_MAX_ATTEMPTS times per reply."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Iterator
from typing import Any

import pytest

from gemini_backend.ai.openai_compat import OpenAIProvider
from tests.ai.fake_openai import FakeOpenAI, Reply, rate_limited, server_error
from tests.ai.fake_server import Hang
from tests.helpers import bearer, read_sse, sign_in

REPLIES = 40
FAULT_RATE = 0.2
MAX_ATTEMPTS = 3


def _behaviours(count: int, seed: int) -> list[Any]:
    rng = random.Random(seed)
    faults = [
        rate_limited(),
        server_error(500),
        server_error(503),
        Hang(),
        Reply(chunks=("Partial", " answer"), break_after=True),
    ]
    return [rng.choice(faults) if rng.random() < FAULT_RATE else Reply() for _ in range(count)]


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    server = FakeOpenAI().start()
    # Enough scripted answers for every attempt; the last one repeats.
    server.script(*_behaviours(REPLIES * MAX_ATTEMPTS, seed=20261122))
    yield server
    server.stop()


@pytest.fixture
def settings_overrides(fake: FakeOpenAI) -> dict[str, Any]:
    return {
        "ai_provider": "openai",
        "openai_base_url": fake.url + "/v1",
        "openai_api_key": "sk-test-faults",
        "openai_model": "gpt-fake",
        "ai_max_attempts": MAX_ATTEMPTS,
        "ai_timeout_seconds": 1.0,
        "basic_daily_limit": 1000,
        "send_per_minute": 1000,
    }


async def test_every_reply_ends_with_an_outcome_and_calls_are_bounded(client, app, fake):
    users = [bearer(await sign_in(client)) for _ in range(4)]
    rooms = []
    for auth in users:
        # Named rooms: no title call, so every provider call counted is a reply attempt.
        response = await client.post("/chatroom", json={"name": "faults"}, headers=auth)
        rooms.append((auth, response.json()["id"]))

    async def send(i: int) -> tuple[dict[str, str], str]:
        auth, room = rooms[i % len(rooms)]
        response = await client.post(
            f"/chatroom/{room}/message", json={"content": f"question {i}"}, headers=auth
        )
        assert response.status_code == 202, response.text
        return auth, response.json()["stream_url"]

    receipts = await asyncio.gather(*(send(i) for i in range(REPLIES)))
    endings = await asyncio.gather(*(read_sse(client, url, auth) for auth, url in receipts))
    outcomes: dict[str, int] = {}
    for events in endings:
        kind = events[-1][1]
        assert kind in {"done", "error"}, events
        final = json.loads(events[-1][2])
        assert final["status"] in {"completed", "failed"}, final
        if final["status"] == "failed":
            assert final["error"], final  # a code, never a silent failure
        else:
            assert final["content"] == "Hello from the fake."
        outcomes[final["status"]] = outcomes.get(final["status"], 0) + 1
    calls = len(fake.completions)
    print(f"outcomes {outcomes}; provider calls {calls} for {REPLIES} replies")
    assert calls <= REPLIES * MAX_ATTEMPTS
    assert outcomes.get("completed", 0) >= REPLIES // 2  # retries absorb most faults

    for services in (app.state.services, getattr(app.state, "worker", None)):
        provider = getattr(services, "provider", None)
        if isinstance(provider, OpenAIProvider):
            await provider.aclose()
