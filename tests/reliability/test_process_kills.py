"""Killed processes lose no reply and duplicate none (SIGKILL: no shutdown code runs).

- production mode: an API process and a worker on PostgreSQL + Redis; the worker is killed
  mid-reply and another one started: the reply completes exactly once, and the client's open
  stream sees it through (a `reset` event, then the whole reply). And the acceptance run's
  settings: two workers, the busy one killed, nothing restarted, `REPLY_STALE_SECONDS=20`.
- embedded mode: the API process (its own worker) is killed mid-reply and restarted on the
  same SQLite file: the reply completes exactly once.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from tests.conftest import BACKEND, Storage
from tests.helpers import new_number
from tests.processes import ServiceProcess, free_port, service_env

DEMO_TEXT = 'Demo reply (context: 0 earlier messages []) to: "Tell me something slowly"'


def sse_events(response: httpx.Response) -> Iterator[tuple[str, str, str]]:
    fields: dict[str, str] = {}
    for line in response.iter_lines():
        if line == "":
            if "event" in fields:
                yield fields.get("id", ""), fields["event"], fields.get("data", "")
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields[name] = value[1:] if value.startswith(" ") else value


def sign_in_and_send(client: httpx.Client) -> tuple[dict[str, str], dict]:
    number = new_number()
    otp = client.post("/auth/send-otp", json={"mobile_number": number}).json()["otp"]
    token = client.post("/auth/verify-otp", json={"mobile_number": number, "otp": otp}).json()
    auth = {"Authorization": f"Bearer {token['access_token']}"}
    room = client.post("/chatroom", json={"name": "kill"}, headers=auth).json()["id"]
    sent = client.post(
        f"/chatroom/{room}/message", json={"content": "Tell me something slowly"}, headers=auth
    )
    assert sent.status_code == 202, sent.text
    return auth, sent.json()


def replies_in_db(url: str, user_message_id: int) -> list[tuple[str, str, int]]:
    sync_url = url.replace("+aiosqlite", "").replace("+asyncpg", "+psycopg")
    if sync_url.startswith("postgresql"):
        return _pg_replies(url, user_message_id)
    engine = sa.create_engine(sync_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT status, content, attempts FROM messages WHERE reply_to = :m"),
                {"m": user_message_id},
            ).all()
    finally:
        engine.dispose()
    return [tuple(r) for r in rows]


def _pg_replies(url: str, user_message_id: int) -> list[tuple[str, str, int]]:
    import asyncio

    import asyncpg

    async def fetch() -> list[tuple[str, str, int]]:
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            rows = await conn.fetch(
                "SELECT status, content, attempts FROM messages WHERE reply_to = $1",
                user_message_id,
            )
        finally:
            await conn.close()
        return [(r["status"], r["content"], r["attempts"]) for r in rows]

    return asyncio.run(fetch())


@pytest.fixture
def env(storage: Storage, database_url: str, tmp_path: Path) -> dict[str, str]:
    return service_env(
        BACKEND,
        database_url=database_url,
        redis_url=storage.redis_url,
        tmp_path=tmp_path,
        DEMO_CHUNK_DELAY_MS="400",
        REPLY_STALE_SECONDS="3",
        JWT_SECRET="k" * 40,
    )


def follow_through_a_kill(
    client: httpx.Client, auth: dict[str, str], receipt: dict, kill: Callable[[], None]
) -> list[tuple[str, str, str]]:
    """The events of the reply's stream up to its final one; `kill` runs at the first delta
    (mid-reply: the job unacknowledged, the reply `generating`)."""
    seen: list[tuple[str, str, str]] = []
    with client.stream("GET", receipt["stream_url"], headers=auth) as response:
        events = sse_events(response)
        for event in events:
            seen.append(event)
            if event[1] == "delta":
                break
        kill()
        for event in events:
            seen.append(event)
            if event[1] in {"done", "error"}:
                break
    return seen


def assert_completed_once_after_a_reset(
    seen: list[tuple[str, str, str]], database_url: str, receipt: dict, logs: str
) -> None:
    kinds = [kind for _, kind, _ in seen]
    assert kinds[0] == "delta"
    assert "reset" in kinds, kinds
    assert kinds[-1] == "done", (kinds, logs[-3000:])
    after_reset = seen[kinds.index("reset") + 1 :]
    text = "".join(json.loads(d)["text"] for _, k, d in after_reset if k == "delta")
    assert text == DEMO_TEXT
    final = json.loads(seen[-1][2])
    assert final["status"] == "completed"
    assert final["content"] == DEMO_TEXT
    rows = replies_in_db(database_url, receipt["message_id"])
    assert rows == [("completed", DEMO_TEXT, 2)]  # one reply, produced by a second attempt


@pytest.mark.skipif(BACKEND != "production", reason="separate workers exist in production mode")
def test_worker_killed_mid_reply(env: dict[str, str], tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    api = ServiceProcess(
        ["serve", "--port", str(port), "--no-migrate"], env, tmp_path, tmp_path / "api.log"
    )
    workers = [ServiceProcess(["worker"], env, tmp_path, tmp_path / "worker1.log")]

    def kill_and_replace() -> None:
        workers[0].kill()
        workers.append(ServiceProcess(["worker"], env, tmp_path, tmp_path / "worker2.log"))

    try:
        api.wait_healthy(base)
        with httpx.Client(base_url=base, timeout=30.0) as client:
            auth, receipt = sign_in_and_send(client)
            seen = follow_through_a_kill(client, auth, receipt, kill_and_replace)
        assert_completed_once_after_a_reset(
            seen, env["DATABASE_URL"], receipt, workers[-1].output()
        )
    finally:
        for process in (api, *workers):
            process.kill()


@pytest.mark.skipif(BACKEND != "production", reason="separate workers exist in production mode")
def test_the_acceptance_run_a_surviving_worker_completes_a_killed_workers_reply(
    env: dict[str, str], tmp_path: Path
) -> None:
    """The acceptance run as the issue states it: two workers at `DEMO_CHUNK_DELAY_MS=400`,
    `REPLY_STALE_SECONDS=20`; the one producing the reply is killed with SIGKILL and nothing
    is restarted. The other one's sweeper finds the reply stale (no heartbeat for 20 s) and
    produces it again: it completes exactly once, and the open stream sees it through."""
    env = {**env, "REPLY_STALE_SECONDS": "20"}
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    api = ServiceProcess(
        ["serve", "--port", str(port), "--no-migrate"], env, tmp_path, tmp_path / "api.log"
    )
    workers = [
        ServiceProcess(["worker"], env, tmp_path, tmp_path / f"worker{i}.log") for i in range(2)
    ]
    busy: list[ServiceProcess] = []

    def kill_the_busy_one() -> None:
        busy.extend(w for w in workers if "Executing task generate_reply" in w.output())
        assert len(busy) == 1, [w.output()[-2000:] for w in workers]
        busy[0].kill()

    try:
        api.wait_healthy(base)
        with httpx.Client(base_url=base, timeout=60.0) as client:
            auth, receipt = sign_in_and_send(client)
            seen = follow_through_a_kill(client, auth, receipt, kill_the_busy_one)
        survivor = next(w for w in workers if w is not busy[0])
        assert_completed_once_after_a_reset(seen, env["DATABASE_URL"], receipt, survivor.output())
        assert '"reply_swept"' in survivor.output()
    finally:
        for process in (api, *workers):
            process.kill()


@pytest.mark.skipif(BACKEND != "embedded", reason="the API process is the worker in embedded mode")
def test_api_process_killed_mid_reply(env: dict[str, str], tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    args = ["serve", "--port", str(port)]
    api = ServiceProcess(args, env, tmp_path, tmp_path / "api1.log")
    restarted: ServiceProcess | None = None
    try:
        api.wait_healthy(base)
        with httpx.Client(base_url=base, timeout=30.0) as client:
            auth, receipt = sign_in_and_send(client)
            with client.stream("GET", receipt["stream_url"], headers=auth) as response:
                for _id, kind, _data in sse_events(response):
                    if kind == "delta":
                        break
                api.kill()
        restarted = ServiceProcess(args, env, tmp_path, tmp_path / "api2.log")
        restarted.wait_healthy(base)
        with (
            httpx.Client(base_url=base, timeout=30.0) as client,
            client.stream("GET", receipt["stream_url"], headers=auth) as response,
        ):
            kinds = []
            for _id, kind, data in sse_events(response):
                kinds.append(kind)
                if kind in {"done", "error"}:
                    final = json.loads(data)
                    break
        assert kinds[-1] == "done", (kinds, restarted.output())
        assert final["content"] == DEMO_TEXT
        rows = replies_in_db(env["DATABASE_URL"], receipt["message_id"])
        assert rows == [("completed", DEMO_TEXT, 2)]
    finally:
        for process in (api, restarted):
            if process is not None:
                process.kill()


def _read_until_final(client: httpx.Client, url: str, auth: dict[str, str]) -> dict:
    with client.stream("GET", url, headers=auth) as response:
        for _id, kind, data in sse_events(response):
            if kind in {"done", "error"}:
                final: dict = json.loads(data)
                return final
    raise AssertionError("the stream ended without a final event")


@pytest.mark.skipif(BACKEND != "production", reason="separate workers exist in production mode")
def test_two_workers_share_the_queue_and_sigterm_finishes_in_flight_replies(
    env: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**env, "DEMO_CHUNK_DELAY_MS": "100"}
    api = ServiceProcess(
        ["serve", "--port", str(port), "--no-migrate"], env, tmp_path, tmp_path / "api.log"
    )
    workers = [
        ServiceProcess(["worker"], env, tmp_path, tmp_path / f"worker{i}.log") for i in range(2)
    ]
    try:
        api.wait_healthy(base)
        for worker in workers:  # both take jobs before one is stopped
            worker.wait_logged("worker_started")
        with httpx.Client(base_url=base, timeout=30.0) as client:
            receipts = []
            for _ in range(4):  # four users, five messages each (the Basic limit)
                auth, first = sign_in_and_send(client)
                room = first["user_message"]["chatroom_id"]
                receipts.append((auth, first))
                for i in range(4):
                    sent = client.post(
                        f"/chatroom/{room}/message", json={"content": f"m{i}"}, headers=auth
                    )
                    assert sent.status_code == 202, sent.text
                    receipts.append((auth, sent.json()))
            # Stop one worker while replies are in flight: SIGTERM lets it finish its replies.
            auth, receipt = receipts[0]
            with client.stream("GET", receipt["stream_url"], headers=auth) as response:
                for _id, kind, _data in sse_events(response):
                    if kind == "delta":
                        break
            workers[0].process.send_signal(15)
            finals = [_read_until_final(client, r["stream_url"], a) for a, r in receipts]
        assert workers[0].process.wait(timeout=60) == 0, workers[0].output()
        assert [f["status"] for f in finals] == ["completed"] * len(receipts)
        for _auth, receipt in receipts:
            rows = replies_in_db(env["DATABASE_URL"], receipt["message_id"])
            assert len(rows) == 1
            status, _content, attempts = rows[0]
            assert (status, attempts) == ("completed", 1)  # finished, not abandoned and swept
        logs = workers[0].output() + workers[1].output()
        assert logs.count('"reply_finished"') == len(receipts), logs[-3000:]
    finally:
        for process in (api, *workers):
            process.kill()
