"""The daily quota holds across API processes: 20 concurrent sends from one Basic user, spread
over two API processes on PostgreSQL + Redis, get exactly 5 acceptances, never 6."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import httpx
import pytest

from tests.conftest import BACKEND, Storage
from tests.helpers import new_number
from tests.processes import ServiceProcess, free_port, service_env

# `make soak` (GB_SOAK=1) runs the long version.
TRIALS = 100 if os.environ.get("GB_SOAK") else 3
SENDS = 20


@pytest.mark.skipif(BACKEND != "production", reason="several API processes need production mode")
def test_quota_race_across_two_api_processes(
    storage: Storage, database_url: str, tmp_path: Path
) -> None:
    env = service_env(
        BACKEND,
        database_url=database_url,
        redis_url=storage.redis_url,
        tmp_path=tmp_path,
        JWT_SECRET="r" * 40,
    )
    ports = [free_port(), free_port()]
    apis = [
        ServiceProcess(
            ["serve", "--port", str(port), "--no-migrate"], env, tmp_path, tmp_path / f"api{i}.log"
        )
        for i, port in enumerate(ports)
    ]
    worker = ServiceProcess(["worker"], env, tmp_path, tmp_path / "worker.log")
    try:
        bases = [f"http://127.0.0.1:{port}" for port in ports]
        for api, base in zip(apis, bases, strict=True):
            api.wait_healthy(base)
        results = asyncio.run(_trials(bases))
        for accepted, refused in results:
            assert (accepted, refused) == (5, SENDS - 5)
    finally:
        for process in (*apis, worker):
            process.kill()


async def _trials(bases: list[str]) -> list[tuple[int, int]]:
    clients = [httpx.AsyncClient(base_url=base, timeout=30.0) for base in bases]
    try:
        outcomes = []
        for _ in range(TRIALS):
            number = new_number()
            otp = (await clients[0].post("/auth/send-otp", json={"mobile_number": number})).json()
            tokens = await clients[0].post(
                "/auth/verify-otp", json={"mobile_number": number, "otp": otp["otp"]}
            )
            auth = {"Authorization": f"Bearer {tokens.json()['access_token']}"}
            room = (await clients[1].post("/chatroom", json={}, headers=auth)).json()["id"]
            responses = await asyncio.gather(
                *(
                    clients[i % 2].post(
                        f"/chatroom/{room}/message", json={"content": f"m{i}"}, headers=auth
                    )
                    for i in range(SENDS)
                )
            )
            codes = [r.status_code for r in responses]
            assert set(codes) <= {202, 429}, codes
            outcomes.append((codes.count(202), codes.count(429)))
        return outcomes
    finally:
        for client in clients:
            await client.aclose()
