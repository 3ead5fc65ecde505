"""Redis and PostgreSQL restarted under load (production mode): no accepted message is lost,
none is answered twice, and the service recovers by itself. The tests start their own
throwaway `redis-server` and PostgreSQL cluster (`initdb` + `pg_ctl`), never the machine's.

During the outage requests are answered 503 (never a hang); after it, sends are accepted again
(the recovery time is printed), and every message accepted before, during or after the restart
ends with exactly one completed reply: jobs lost with Redis' memory are re-enqueued from the
database by the sweeper.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import BACKEND
from tests.processes import clean_env, free_port, running_service
from tests.reliability.traffic import fault_under_load

pytestmark = pytest.mark.skipif(BACKEND != "production", reason="PostgreSQL + Redis outages")

PG_BIN = next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin"))), "")
USERS = 6
LOAD_SECONDS = 2.0  # of steady sends before and after the restart


class Redis:
    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                shutil.which("redis-server") or "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_port(self.port)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)


class Postgres:
    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.data = directory / "pgdata"
        self.log = directory / "pg.log"
        subprocess.run(
            [f"{PG_BIN}/initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust"],
            check=True,
            capture_output=True,
            user=_unprivileged(),
        )

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def pg_ctl(self, *args: str) -> None:
        subprocess.run(
            [f"{PG_BIN}/pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", *args],
            check=True,
            capture_output=True,
            user=_unprivileged(),
            timeout=60,
        )

    def start(self) -> None:
        self.pg_ctl(
            "-o",
            f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        self.pg_ctl("-m", mode, "stop")


def _unprivileged() -> str | None:
    """initdb refuses to run as root: use the `postgres` system user then."""
    return "postgres" if os.geteuid() == 0 else None


def _wait_port(port: int, timeout: float = 20.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """One throwaway Redis and PostgreSQL cluster, API and worker for both restarts (each test
    signs up its own users)."""
    tmp_path = tmp_path_factory.mktemp("outages")
    if not PG_BIN or shutil.which("redis-server") is None:
        pytest.fail("redis-server and PostgreSQL's initdb/pg_ctl are needed")
    # The cluster lives where the `postgres` user (initdb refuses root) can reach it.
    pg_dir = Path(tempfile.mkdtemp(prefix="gemini-backend-pg-"))
    pg_dir.chmod(0o777)
    redis = Redis(tmp_path)
    postgres = Postgres(pg_dir)
    redis.start()
    postgres.start()
    port = free_port()
    env = clean_env(
        DATABASE_URL=postgres.url,
        REDIS_URL=redis.url,
        DATA_DIR=str(tmp_path / "data"),
        JWT_SECRET="o" * 40,
        LOG_FORMAT="json",
        DEMO_CHUNK_DELAY_MS="5",
        REPLY_STALE_SECONDS="3",
        SEND_PER_MINUTE="100000",
        BASIC_DAILY_LIMIT="100000",
        DB_POOL_TIMEOUT_SECONDS="3",
    )
    migrate = subprocess.run(
        [str(Path(sys.executable).with_name("gemini-backend")), "migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert migrate.returncode == 0, migrate.stderr
    try:
        with running_service(BACKEND, env, tmp_path, port) as api:
            yield {
                "base": f"http://127.0.0.1:{port}",
                "redis": redis,
                "postgres": postgres,
                "api": api,
            }
    finally:
        redis.kill()
        with contextlib.suppress(subprocess.SubprocessError):
            postgres.stop("immediate")
        shutil.rmtree(pg_dir, ignore_errors=True)


async def _run_with_restart(stack: dict, restart: Callable[[], None]) -> None:
    await fault_under_load(
        stack["base"],
        restart,
        users=USERS,
        client_timeout=15.0,
        before=LOAD_SECONDS,
        after=LOAD_SECONDS,
        logs=(stack["api"].log,),
    )


def test_redis_restart_during_load(stack):
    redis: Redis = stack["redis"]

    def restart() -> None:
        redis.kill()  # its memory (queue, streams, cache) is gone
        time.sleep(1.0)  # the outage
        redis.start()

    asyncio.run(_run_with_restart(stack, restart))


def test_postgres_restart_during_load(stack):
    postgres: Postgres = stack["postgres"]

    def restart() -> None:
        postgres.stop("fast")
        time.sleep(1.0)  # the outage
        postgres.start()

    asyncio.run(_run_with_restart(stack, restart))
