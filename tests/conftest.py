"""Test harness: the same suite runs embedded (SQLite, in-process everything) or against
PostgreSQL + Redis (`GB_TEST_BACKEND=production`).

- embedded: one migrated SQLite template per run, copied for every test.
- production: one throwaway database per run on TEST_DATABASE_URL's server, migrated once and
  emptied before every test; Redis keys are namespaced per test on TEST_REDIS_URL.
A production run whose services are unreachable fails; it never skips.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import redis

from gemini_backend.config import Settings
from gemini_backend.core.clock import ManualClock
from gemini_backend.main import create_app
from gemini_backend.migrate import upgrade_to_head
from gemini_backend.models import metadata
from gemini_backend.worker.main import run_worker

BACKEND = os.environ.get("GB_TEST_BACKEND", "embedded")
TEST_DATABASE_URL = os.environ.get(
    "TEST_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
JWT_SECRET = "test-secret-" + "x" * 40
START = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


def _asyncpg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def _with_database(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


def pytest_report_header() -> str:
    return f"gemini-backend test backend: {BACKEND}"


# A test that reaches neither fixture nor name that tells the modes apart passes or fails the
# same in both: `make test-fast` (GB_TEST_MODE_FREE_ONCE=1) runs it in the embedded run only.
MODE_FIXTURES = frozenset({"storage", "database_url", "make_settings", "app", "client"})
MODE_NAMES = ("BACKEND", "TEST_DATABASE_URL", "TEST_REDIS_URL")


def is_mode_free(item: pytest.Item) -> bool:
    if MODE_FIXTURES & set(getattr(item, "fixturenames", ())):
        return False
    module = getattr(item, "module", None)
    if module is None or any(name in vars(module) for name in MODE_NAMES):
        return False
    return "GB_TEST_BACKEND" not in Path(module.__file__).read_text()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if BACKEND != "production" or os.environ.get("GB_TEST_MODE_FREE_ONCE") != "1":
        return
    once = [item for item in items if is_mode_free(item)]
    if once:
        config.hook.pytest_deselected(items=once)
        kept = set(map(id, items)) - set(map(id, once))
        items[:] = [item for item in items if id(item) in kept]


@dataclass
class Storage:
    """Where the tests of this run keep their data."""

    backend: str
    database_url: str | None = None  # production: the run's database
    redis_url: str | None = None
    template: Path | None = None  # embedded: the migrated SQLite file
    reset_sql: str = ""  # production: what empties the database for the next test


@pytest.fixture(scope="session")
def storage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Storage]:
    if BACKEND == "embedded":
        template = tmp_path_factory.mktemp("template") / "template.db"
        upgrade_to_head(_settings(database_url=f"sqlite+aiosqlite:///{template}"))
        yield Storage("embedded", template=template)
        return
    if BACKEND != "production":
        raise pytest.UsageError(f"GB_TEST_BACKEND must be embedded or production, not {BACKEND}")
    name = f"gb_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    try:
        redis.Redis.from_url(TEST_REDIS_URL, socket_connect_timeout=3).ping()
        asyncio.run(_admin(TEST_DATABASE_URL, f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        pytest.exit(
            f"production-mode tests need PostgreSQL at {TEST_DATABASE_URL} and Redis at "
            f"{TEST_REDIS_URL}: {exc!r}",
            returncode=1,
        )
    url = _with_database(TEST_DATABASE_URL, name)
    upgrade_to_head(_settings(database_url=url, redis_url=TEST_REDIS_URL))
    reset_sql = asyncio.run(_reset_sql(url))
    try:
        yield Storage("production", database_url=url, redis_url=TEST_REDIS_URL, reset_sql=reset_sql)
    finally:
        asyncio.run(_admin(TEST_DATABASE_URL, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _reset_sql(url: str) -> str:
    """DELETE every table, children first, and restart the sequences: on tables of a few rows
    this is about 10x faster than TRUNCATE, which replaces every table's files."""
    conn = await asyncpg.connect(_asyncpg_dsn(url))
    try:
        sequences = await conn.fetch("SELECT schemaname, sequencename FROM pg_sequences")
    finally:
        await conn.close()
    deletes = [f'DELETE FROM "{t.name}"' for t in reversed(metadata.sorted_tables)]  # noqa: S608
    restarts = [f'ALTER SEQUENCE "{s[0]}"."{s[1]}" RESTART' for s in sequences]
    return "; ".join(deletes + restarts)


async def _admin(url: str, sql: str) -> None:
    conn = await asyncpg.connect(_asyncpg_dsn(url))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "environment": "test",
        "jwt_secret": JWT_SECRET,
        "log_level": "INFO",
        "log_format": "console",
        "demo_chunk_delay_ms": 0,
        # Retries after 50 ms, 100 ms, ... (0.5 s, 1 s, ... by default): what they do is tested,
        # not how long they wait.
        "ai_retry_delay_seconds": 0.05,
        # Every test client shares one address; the per-address limit has tests of its own.
        "auth_attempts_per_ip_per_minute": 1_000_000,
    }
    values.update(overrides)
    if values["environment"] != "production":  # which refuses a cheap hash
        # Argon2id at 1 MiB and one pass: about 100x cheaper than the default, a quarter of the
        # suite's time otherwise. tests/auth/test_passwords.py checks the production cost.
        values = {"password_hash_memory_kib": 1024, "password_hash_time_cost": 1, **values}
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
def database_url(storage: Storage, tmp_path: Path) -> Iterator[str]:
    """A clean database for this test."""
    if storage.backend == "embedded":
        assert storage.template is not None
        path = tmp_path / "test.db"
        shutil.copyfile(storage.template, path)
        yield f"sqlite+aiosqlite:///{path}"
        return
    assert storage.database_url is not None
    asyncio.run(_admin(storage.database_url, storage.reset_sql))
    yield storage.database_url


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def make_settings(storage: Storage, database_url: str, tmp_path: Path) -> Callable[..., Settings]:
    prefix = f"gbtest:{uuid.uuid4().hex[:12]}"

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "database_url": database_url,
            "redis_url": storage.redis_url,
            "redis_key_prefix": prefix,
            "data_dir": tmp_path / "data",
        }
        values.update(overrides)
        return _settings(**values)

    return make


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    """Override in a module or test to change the app's settings."""
    return {}


@pytest.fixture
async def app(
    make_settings: Callable[..., Settings],
    clock: ManualClock,
    settings_overrides: dict[str, Any],
) -> AsyncIterator[Any]:
    settings = make_settings(**settings_overrides)
    application = create_app(settings, clock=clock)
    async with application.router.lifespan_context(application):
        if not settings.is_production_mode:
            yield application
            return
        # Production mode: replies are produced by a queue worker, here one in this event loop
        # (the same code as `gemini-backend worker`, against the same Redis Streams).
        stop = asyncio.Event()
        started = asyncio.Event()

        def on_started(services: Any) -> None:
            application.state.worker = services
            started.set()

        worker = asyncio.create_task(
            run_worker(
                settings,
                clock=clock,
                stop=stop,
                shutdown_grace_seconds=3,
                on_started=on_started,
            )
        )
        # Started (its first sweep done) before the test runs, as a deployed worker would be.
        waiting = asyncio.ensure_future(started.wait())
        await asyncio.wait([worker, waiting], timeout=30, return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        if worker.done():
            worker.result()  # raises why it stopped
        assert started.is_set(), "the worker did not start within 30 s"
        try:
            yield application
        finally:
            stop.set()
            await asyncio.wait_for(worker, 30)


@pytest.fixture
async def client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=("198.51.100.7", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c
