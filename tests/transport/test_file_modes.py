"""Embedded mode's files (the SQLite database with its -wal and -shm files, the generated JWT
secret) and DATA_DIR are created readable by their owner only, whatever the umask."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import httpx
import pytest

from gemini_backend.config import Settings
from gemini_backend.main import create_app
from gemini_backend.migrate import upgrade_to_head
from tests.conftest import JWT_SECRET


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def permissive_umask():
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


async def _serve_a_little(settings: Settings) -> None:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            assert (await client.get("/ready")).status_code == 200
            sent = await client.post("/auth/send-otp", json={"mobile_number": "+919876500001"})
            assert sent.status_code == 200
        data = settings.data_dir
        files = sorted(data.iterdir())
        assert {f.name for f in files} >= {"gemini_backend.db", "gemini_backend.db-wal"}
        for path in files:
            assert _mode(path) == 0o600, (path.name, oct(_mode(path)))


@pytest.mark.usefixtures("permissive_umask")
def test_the_database_and_data_dir_are_private(tmp_path):
    data = tmp_path / "fresh" / "data"
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, environment="test", data_dir=data, log_format="console"
    )
    upgrade_to_head(settings)  # what `gemini-backend migrate` does: it creates the file
    asyncio.run(_serve_a_little(settings))
    assert _mode(data) == 0o700


@pytest.mark.usefixtures("permissive_umask")
def test_an_explicit_sqlite_path_gets_a_private_file(tmp_path):
    path = tmp_path / "elsewhere" / "app.db"
    upgrade_to_head(
        Settings(  # type: ignore[call-arg]
            _env_file=None,
            environment="test",
            jwt_secret=JWT_SECRET,
            database_url=f"sqlite:///{path}",
            data_dir=tmp_path / "d",
        )
    )
    assert _mode(path) == 0o600
    assert _mode(path.parent) == 0o700
