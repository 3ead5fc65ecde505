"""What the kill tests share: the service's real processes, a signed-in client over HTTP, the
reply's event stream and the replies as the database holds them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import sqlalchemy as sa

from tests.helpers import new_number
from tests.processes import ServiceProcess, free_port

Event = tuple[str, str, str]  # id, event, data


def sse_events(response: httpx.Response) -> Iterator[Event]:
    fields: dict[str, str] = {}
    for line in response.iter_lines():
        if line == "":
            if "event" in fields:
                yield fields.get("id", ""), fields["event"], fields.get("data", "")
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields[name] = value[1:] if value.startswith(" ") else value


def sign_in_with_a_room(client: httpx.Client) -> tuple[dict[str, str], int]:
    """A new user's bearer header and a room of theirs."""
    number = new_number()
    otp = client.post("/auth/send-otp", json={"mobile_number": number}).json()["otp"]
    token = client.post("/auth/verify-otp", json={"mobile_number": number, "otp": otp}).json()
    auth = {"Authorization": f"Bearer {token['access_token']}"}
    room = client.post("/chatroom", json={"name": "kill"}, headers=auth).json()["id"]
    return auth, room


def read_until_final(client: httpx.Client, url: str, auth: dict[str, str]) -> dict:
    with client.stream("GET", url, headers=auth) as response:
        for _id, kind, data in sse_events(response):
            if kind in {"done", "error"}:
                final: dict = json.loads(data)
                return final
    raise AssertionError("the stream ended without a final event")


def follow_through_a_kill(
    client: httpx.Client, auth: dict[str, str], receipt: dict, kill: Callable[[], None]
) -> list[Event]:
    """The events of the reply's stream up to its final one; `kill` runs at the first delta
    (mid-reply: the job unacknowledged, the reply `generating`)."""
    seen: list[Event] = []
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


def replies_in_db(url: str, user_message_id: int) -> list[tuple[str, str, int]]:
    """(status, content, attempts) of every reply to the message."""
    if url.startswith("postgresql"):
        return asyncio.run(_pg_replies(url, user_message_id))
    engine = sa.create_engine(url.replace("+aiosqlite", ""))
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT status, content, attempts FROM messages WHERE reply_to = :m"),
                {"m": user_message_id},
            ).all()
    finally:
        engine.dispose()
    return [(r[0], r[1], r[2]) for r in rows]


async def _pg_replies(url: str, user_message_id: int) -> list[tuple[str, str, int]]:
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        rows = await conn.fetch(
            "SELECT status, content, attempts FROM messages WHERE reply_to = $1", user_message_id
        )
    finally:
        await conn.close()
    return [(r["status"], r["content"], r["attempts"]) for r in rows]


@dataclass
class Stack:
    """Production mode: an API process and its workers, all killed when the test ends."""

    base: str
    env: dict[str, str]
    tmp_path: Path
    api: ServiceProcess
    workers: list[ServiceProcess] = field(default_factory=list)

    def replace_first_worker(self) -> None:
        """SIGKILL the first worker and start another (worker<n>.log)."""
        self.workers[0].kill()
        log = self.tmp_path / f"worker{len(self.workers) + 1}.log"
        self.workers.append(ServiceProcess(["worker"], self.env, self.tmp_path, log))


@contextmanager
def api_and_workers(env: dict[str, str], tmp_path: Path, workers: int = 1) -> Iterator[Stack]:
    """`serve` (on the migrated test database) and `workers` workers; yields once the API
    answers /health."""
    port = free_port()
    api = ServiceProcess(
        ["serve", "--port", str(port), "--no-migrate"], env, tmp_path, tmp_path / "api.log"
    )
    stack = Stack(f"http://127.0.0.1:{port}", env, tmp_path, api)
    stack.workers.extend(
        ServiceProcess(["worker"], env, tmp_path, tmp_path / f"worker{i + 1}.log")
        for i in range(workers)
    )
    try:
        api.wait_healthy(stack.base)
        yield stack
    finally:
        for process in (stack.api, *stack.workers):
            process.kill()


@contextmanager
def killed_mid_reply_and_restarted(
    env: dict[str, str],
    tmp_path: Path,
    send: Callable[[httpx.Client], tuple[dict[str, str], dict]],
) -> Iterator[tuple[httpx.Client, ServiceProcess, dict[str, str], dict]]:
    """Embedded mode: `serve` (its own worker) takes the message `send` sends and is killed
    with SIGKILL at the reply's first delta, then started again on the same SQLite file and
    DATA_DIR. Yields a client of the restarted process, the process, `send`'s auth and
    receipt."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    args = ["serve", "--port", str(port)]
    api = ServiceProcess(args, env, tmp_path, tmp_path / "api1.log")
    restarted: ServiceProcess | None = None
    try:
        api.wait_healthy(base)
        with httpx.Client(base_url=base, timeout=30.0) as client:
            auth, receipt = send(client)
            with client.stream("GET", receipt["stream_url"], headers=auth) as response:
                for _id, kind, _data in sse_events(response):
                    if kind == "delta":
                        break
                api.kill()
        restarted = ServiceProcess(args, env, tmp_path, tmp_path / "api2.log")
        restarted.wait_healthy(base)
        with httpx.Client(base_url=base, timeout=30.0) as client:
            yield client, restarted, auth, receipt
    finally:
        for process in (api, restarted):
            if process is not None:
                process.kill()
