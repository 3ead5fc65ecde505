"""A pooled PostgreSQL connection that the server closed (a restart, a terminated backend) is
replaced as it leaves the pool, without a round trip: the request that takes it succeeds."""

from __future__ import annotations

import asyncpg
import pytest
from sqlalchemy import text

from tests.conftest import BACKEND
from tests.helpers import bearer, sign_in

pytestmark = pytest.mark.skipif(BACKEND != "production", reason="PostgreSQL connections")


@pytest.fixture
def settings_overrides():
    return {"db_pool_size": 1, "db_max_overflow": 0}  # every request takes the same connection


async def test_a_request_on_a_connection_the_server_closed_succeeds(app, client):
    tokens = await sign_in(client)
    async with app.state.services.database.engine.connect() as conn:
        pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
    url = app.state.services.settings.resolved_database_url.replace(
        "postgresql+asyncpg", "postgresql"
    )
    admin = await asyncpg.connect(url)
    try:
        # Waits (up to 5 s) until that backend has exited and closed its socket.
        assert await admin.fetchval("SELECT pg_terminate_backend($1, 5000)", pid)
    finally:
        await admin.close()
    response = await client.post("/chatroom", json={"name": "after"}, headers=bearer(tokens))
    assert response.status_code == 201, response.text
    async with app.state.services.database.engine.connect() as conn:
        assert (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one() != pid
