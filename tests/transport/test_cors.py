"""CORS for browser clients: the headers a client acts on (the request id, Retry-After, the
quota's X-RateLimit-*) are exposed to its scripts on a cross-origin response."""

from __future__ import annotations

import pytest

from tests.helpers import bearer, sign_in

ORIGIN = "https://app.example.com"


@pytest.fixture
def settings_overrides():
    return {"cors_origins": [ORIGIN]}


async def test_the_headers_clients_act_on_are_exposed(client):
    headers = {**bearer(await sign_in(client)), "Origin": ORIGIN}
    room = (await client.post("/chatroom", json={"name": "r"}, headers=headers)).json()["id"]
    sent = await client.post(f"/chatroom/{room}/message", json={"content": "hi"}, headers=headers)
    assert sent.status_code == 202
    assert sent.headers["access-control-allow-origin"] == ORIGIN
    exposed = {
        name.strip().lower() for name in sent.headers["access-control-expose-headers"].split(",")
    }
    present = {name.lower() for name in sent.headers}
    wanted = {
        "x-request-id",
        "retry-after",
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
    }
    assert wanted <= exposed
    assert {
        "x-request-id",
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
    } <= present
