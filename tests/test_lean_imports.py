"""The API process imports only what serving needs (a cold start's cost, bench/README.md):
no taskiq (nor aiohttp, which its package imports) in either mode, no Alembic, no provider,
Stripe or S3 SDK unless configured and used, no redis-py in embedded mode. Checked in a
process of its own, through a sign-in and a send."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import BACKEND

ROOT = Path(__file__).resolve().parents[1]
NOT_IMPORTED = [
    "taskiq",
    "taskiq_redis",
    "aiohttp",
    "alembic",
    "mako",
    "google.genai",
    "openai",
    "stripe",
    "botocore",
    "aiobotocore",
]
NOT_IMPORTED_EMBEDDED = ["redis"]

SCRIPT = """
import asyncio, json, sys
import httpx
from gemini_backend.config import Settings
from gemini_backend.core.clock import SystemClock
from gemini_backend.main import create_app
from tests.helpers import bearer, read_sse, sign_in

async def main(values, watched):
    settings = Settings(_env_file=None, **values)
    app = create_app(settings, clock=SystemClock())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("198.51.100.20", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as api:
            assert (await api.get("/health")).status_code == 200
            auth = bearer(await sign_in(api))
            room = (await api.post("/chatroom", json={"name": "r"}, headers=auth)).json()["id"]
            sent = await api.post(
                f"/chatroom/{room}/message", json={"content": "hello"}, headers=auth
            )
            assert sent.status_code == 202, sent.text
            receipt = sent.json()
            if not settings.is_production_mode:  # this process runs the reply too
                events = await read_sse(api, receipt["stream_url"], auth)
                assert events[-1][1] == "done", events
            else:  # its job waits in the stream, for a worker
                jobs = app.state.services.pipeline.jobs
                assert await jobs.redis.xlen(jobs.stream) == 1
    print(json.dumps(sorted(m for m in watched if m in sys.modules)))

asyncio.run(main(json.loads(sys.argv[1]), json.loads(sys.argv[2])))
"""


def test_the_api_process_imports_no_queue_worker_migration_or_sdk(make_settings):
    settings = make_settings(ai_provider="demo")
    values: dict[str, Any] = json.loads(
        settings.model_dump_json(
            include={
                "environment",
                "database_url",
                "redis_url",
                "redis_key_prefix",
                "data_dir",
                "demo_chunk_delay_ms",
                "password_hash_memory_kib",
                "password_hash_time_cost",
                "ai_provider",
            }
        )
    )
    values["jwt_secret"] = settings.jwt_secret_value()
    values["log_level"] = "WARNING"
    watched = NOT_IMPORTED + (NOT_IMPORTED_EMBEDDED if BACKEND == "embedded" else [])
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(values), json.dumps(watched)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert settings.is_production_mode == (BACKEND == "production")
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
