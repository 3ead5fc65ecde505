"""Models and options per room, through the public API: GET /models, a room's `model`,
`temperature`, `thinking` and `grounding` validated against the model and the caller's plan,
and the reply produced by the room's model with its options."""

from __future__ import annotations

import pytest

from tests.helpers import bearer, sign_in


@pytest.fixture
async def alice(client):
    return bearer(await sign_in(client))


async def test_models_lists_the_catalogue_and_the_default(client, alice):
    response = await client.get("/models", headers=alice)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["default"] == "demo"
    assert body["models"] == [
        {
            "id": "demo",
            "provider": "demo",
            "display_name": "Demo (offline)",
            "context_tokens": 32768,
            "supports": ["images", "pdf", "search"],
            "tiers": ["basic", "pro"],
        },
        {
            "id": "demo-pro",
            "provider": "demo",
            "display_name": "Demo Pro (offline)",
            "context_tokens": 32768,
            "supports": ["images", "pdf", "thinking", "search"],
            "tiers": ["pro"],
        },
    ]


async def test_models_needs_a_signed_in_user(client):
    response = await client.get("/models")
    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"
