"""Network faults between the service and its dependencies (production mode): added latency,
connections reset, and a PostgreSQL or Redis that stops answering without closing anything.

A TCP proxy on loopback (`fault_proxy.py`) stands between a real API process and worker and the
run's PostgreSQL database and Redis; the machine's services themselves are never touched. Under
steady sends, whatever the fault: every request is answered 202 or 503 within the client's
timeout (never a 500, never a hang), sends are accepted again once the fault is gone, and every
accepted message ends with exactly one completed reply.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.conftest import BACKEND, TEST_REDIS_URL, Storage
from tests.processes import free_port, running_service, service_env
from tests.reliability.fault_proxy import FaultProxy
from tests.reliability.traffic import fault_under_load

pytestmark = pytest.mark.skipif(BACKEND != "production", reason="PostgreSQL + Redis faults")

USERS = 6
TIMEOUT = 2  # the service's database and Redis timeouts in these tests, seconds
# A request not answered by then counts as hung. The longest legitimate wait is a pool wait, a
# statement and the rollback after it, each bounded by TIMEOUT.
CLIENT_TIMEOUT = 4 * TIMEOUT


@pytest.fixture(scope="module")
def stack(storage: Storage, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    assert storage.database_url is not None
    tmp_path: Path = tmp_path_factory.mktemp("network-faults")
    database = make_url(storage.database_url)
    redis = make_url(TEST_REDIS_URL)
    pg = FaultProxy(database.port or 5432, database.host or "127.0.0.1").start()
    rd = FaultProxy(redis.port or 6379, redis.host or "127.0.0.1").start()
    port = free_port()
    env = service_env(
        BACKEND,
        database_url=database.set(host="127.0.0.1", port=pg.port).render_as_string(
            hide_password=False
        ),
        redis_url=str(redis.set(host="127.0.0.1", port=rd.port)),
        tmp_path=tmp_path,
        JWT_SECRET="n" * 40,
        DEMO_CHUNK_DELAY_MS="0",
        SEND_PER_MINUTE="100000",
        BASIC_DAILY_LIMIT="100000",
        DB_POOL_TIMEOUT_SECONDS=str(TIMEOUT),
        DB_COMMAND_TIMEOUT_SECONDS=str(TIMEOUT),
        DB_CONNECT_TIMEOUT_SECONDS=str(TIMEOUT),
        REDIS_SOCKET_TIMEOUT_SECONDS=str(TIMEOUT),
        REDIS_POOL_TIMEOUT_SECONDS=str(TIMEOUT),
        # A reply whose job was lost with a fault is re-enqueued from the database this soon.
        REPLY_STALE_SECONDS="4",
    )
    try:
        with running_service(BACKEND, env, tmp_path, port) as api:
            yield {
                "base": f"http://127.0.0.1:{port}",
                "pg": pg,
                "redis": rd,
                "api": api,
                "worker_log": tmp_path / "worker.log",
            }
    finally:
        pg.close()
        rd.close()


async def _under_load(stack: dict, fault: Callable[[], None]) -> None:
    await fault_under_load(
        stack["base"],
        fault,
        users=USERS,
        client_timeout=CLIENT_TIMEOUT,
        before=1.0,
        after=0.0,
        logs=(stack["api"].log, stack["worker_log"]),
    )


def test_added_latency_slows_but_breaks_nothing(stack):
    def slow_then_normal() -> None:
        stack["pg"].latency(0.02)
        stack["redis"].latency(0.02)
        time.sleep(2.0)  # the duration of the fault
        stack["pg"].latency(0)
        stack["redis"].latency(0)

    asyncio.run(_under_load(stack, slow_then_normal))


def test_connections_reset_under_load(stack):
    def resets() -> None:
        stack["pg"].cut()
        time.sleep(0.5)  # the load meets the fresh connections
        stack["redis"].cut()
        time.sleep(0.5)
        stack["pg"].cut()
        stack["redis"].cut()

    asyncio.run(_under_load(stack, resets))


@pytest.mark.parametrize("dependency", ["pg", "redis"])
def test_a_dependency_that_stops_answering_is_503_not_a_hang(stack, dependency):
    proxy: FaultProxy = stack[dependency]

    def silent_for_a_while() -> None:
        proxy.silence()
        time.sleep(CLIENT_TIMEOUT + 2)  # without the service's own timeouts, requests would hang
        proxy.restore()

    asyncio.run(_under_load(stack, silent_for_a_while))
