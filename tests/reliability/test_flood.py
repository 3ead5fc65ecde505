"""A flood of concurrent connections on each endpoint of a real server process: every request
is answered (2xx, 429 or 503: never a hang, a reset or a 500) and the server serves normally
right after. The database pool, the hashing threads and the throttles must never leave a
request waiting on a resource held by another waiting request."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.billing.stripe_events import Customer, event, post_event
from tests.conftest import BACKEND, Storage
from tests.helpers import new_number
from tests.processes import free_port, open_files_limit, running_service, service_env

# Concurrent connections per endpoint: 1,000 in `make soak`, fewer in CI to bound its time.
FLOOD = 1000 if os.environ.get("GB_SOAK") else 200
# Password sign-ins cost an Argon2 hash each (64 MiB, a few at a time).
LOGIN_FLOOD = 300 if os.environ.get("GB_SOAK") else 40
ANSWERED = {200, 201, 202, 204, 429, 503}


@pytest.fixture
def server(storage: Storage, database_url: str, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = service_env(
        BACKEND,
        database_url=database_url,
        redis_url=storage.redis_url,
        tmp_path=tmp_path,
        JWT_SECRET="x" * 40,
        PUBLIC_BASE_URL=base,
        DEMO_CHUNK_DELAY_MS="0",
        LOG_LEVEL="WARNING",
        # The soak's flood creates 1,000 rooms for one user: above the default cap.
        MAX_CHATROOMS_PER_USER="100000",
    )
    with open_files_limit(8192), running_service(BACKEND, env, tmp_path, port) as api:
        yield base
        assert "Traceback" not in api.output()


errors: list[str] = []


async def _flood(client: httpx.AsyncClient, count: int, make: Any) -> Counter[int]:
    async def one(i: int) -> int:
        try:
            response = await make(i)
        except httpx.HTTPError as exc:  # a reset or a timeout: not an answer
            errors.append(f"{type(exc).__name__}: {exc!r}"[:200])
            return -1 if not isinstance(exc, httpx.TimeoutException) else -2
        return response.status_code

    return Counter(await asyncio.gather(*(one(i) for i in range(count))))


async def _run(base: str) -> None:
    # One connection per request (no keep-alive): a flood of connections, and no client-side
    # race with the server closing an idle kept-alive connection.
    limits = httpx.Limits(max_connections=FLOOD + 10, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base, timeout=90.0, limits=limits) as client:
        number, password = new_number(), "flood-test-password-1"
        signup = await client.post(
            "/auth/signup", json={"mobile_number": number, "password": password}
        )
        assert signup.status_code == 201, signup.text
        otp = (await client.post("/auth/send-otp", json={"mobile_number": number})).json()["otp"]
        tokens = (
            await client.post(
                "/auth/verify-otp",
                json={"mobile_number": number, "otp": otp, "password": password},
            )
        ).json()
        auth = {"Authorization": f"Bearer {tokens['access_token']}"}
        room = (await client.post("/chatroom", json={"name": "flood"}, headers=auth)).json()["id"]
        now = int(time.time())
        customer = Customer(tokens["user"]["id"])

        floods = {
            "GET /health": lambda i: client.get("/health"),
            "GET /user/me": lambda i: client.get("/user/me", headers=auth),
            "GET /chatroom": lambda i: client.get("/chatroom", headers=auth),
            "GET /chatroom/{id}": lambda i: client.get(f"/chatroom/{room}", headers=auth),
            "GET /subscription/status": lambda i: client.get("/subscription/status", headers=auth),
            "POST /chatroom": lambda i: client.post(
                "/chatroom", json={"name": f"r{i}"}, headers=auth
            ),
            "POST /chatroom/{id}/message": lambda i: client.post(
                f"/chatroom/{room}/message", json={"content": f"m{i}"}, headers=auth
            ),
            "POST /auth/send-otp": lambda i: client.post(
                "/auth/send-otp", json={"mobile_number": new_number()}
            ),
            "POST /webhook/stripe": lambda i: post_event(
                client,
                event("customer.created", {"id": customer.customer}, now, f"evt_flood_{i}"),
                now,
            ),
        }
        for name, make in floods.items():
            started = time.monotonic()
            answers = await _flood(client, FLOOD, make)
            print(f"{name}: {dict(answers)} in {time.monotonic() - started:.1f} s")
            assert set(answers) <= ANSWERED, (name, answers, errors[:5])
        started = time.monotonic()
        answers = await _flood(
            client,
            LOGIN_FLOOD,
            lambda i: client.post(
                "/auth/login", json={"mobile_number": number, "password": password}
            ),
        )
        print(f"POST /auth/login: {dict(answers)} in {time.monotonic() - started:.1f} s")
        assert set(answers) <= ANSWERED, answers

        # Right after: the service answers normally.
        assert (await client.get("/user/me", headers=auth)).status_code == 200
        assert (await client.get("/ready")).status_code == 200
        sent = await client.post(
            f"/chatroom/{room}/message", json={"content": "after"}, headers=auth
        )
        assert sent.status_code in {202, 429}, sent.text


def test_a_flood_on_each_endpoint_is_answered(server):
    asyncio.run(_run(server))
