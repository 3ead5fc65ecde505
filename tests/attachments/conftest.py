"""The signed-in user and the room every attachment test starts from."""

from __future__ import annotations

import pytest

from tests.helpers import bearer, sign_in


@pytest.fixture
async def alice(client):
    return bearer(await sign_in(client))


@pytest.fixture
async def room(client, alice):
    return (await client.post("/chatroom", json={"name": "files"}, headers=alice)).json()["id"]
