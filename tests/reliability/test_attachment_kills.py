"""A reply with attachments whose producer is killed (SIGKILL) mid-reply completes exactly once
after the sweep, with its files, and settles its token reservation once.

- production mode: an API process and a worker on PostgreSQL + Redis, files on a shared local
  DATA_DIR; the worker is killed at the reply's first delta and another one started, whose
  sweeper queues the stale reply again.
- embedded mode: the API process (its own worker) is killed and restarted on the same SQLite
  file and DATA_DIR.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.attachments import files
from tests.conftest import BACKEND, Storage
from tests.helpers import new_number
from tests.processes import ServiceProcess, free_port, service_env
from tests.reliability.test_process_kills import (
    _read_until_final,
    follow_through_a_kill,
    replies_in_db,
    sse_events,
)

QUESTION = "Tell me something slowly"


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
        MONTHLY_TOKEN_BUDGET_BASIC="1000000",
    )


def sign_in_and_send_files(client: httpx.Client) -> tuple[dict[str, str], dict, str]:
    """A new user's message with a PNG and a PDF: (auth, receipt, the demo's full reply)."""
    number = new_number()
    otp = client.post("/auth/send-otp", json={"mobile_number": number}).json()["otp"]
    token = client.post("/auth/verify-otp", json={"mobile_number": number, "otp": otp}).json()
    auth = {"Authorization": f"Bearer {token['access_token']}"}
    room = client.post("/chatroom", json={"name": "kill"}, headers=auth).json()["id"]
    png, pdf = files.png(), files.pdf()
    ids = []
    for name, data in (("photo.png", png), ("scan.pdf", pdf)):
        uploaded = client.post(
            f"/chatroom/{room}/attachments", files={"file": (name, data)}, headers=auth
        )
        assert uploaded.status_code == 201, uploaded.text
        ids.append(uploaded.json()["id"])
    sent = client.post(
        f"/chatroom/{room}/message",
        json={"content": QUESTION, "attachment_ids": ids},
        headers=auth,
    )
    assert sent.status_code == 202, sent.text
    expected = (
        f'Demo reply (context: 0 earlier messages []) to: "{QUESTION}" '
        f"[attachments: photo.png image/png {len(png)} B, scan.pdf application/pdf {len(pdf)} B]"
    )
    return auth, sent.json(), expected


def assert_settled_once(client: httpx.Client, auth: dict[str, str], final: dict) -> None:
    """The month's tokens are the one reply's, counted once, nothing left reserved."""
    usage = final["usage"]
    spent = usage["prompt_tokens"] + usage["output_tokens"] + usage["thinking_tokens"]
    tokens = client.get("/user/usage", headers=auth).json()["monthly_tokens"]
    assert (tokens["used"], tokens["reserved"]) == (spent, 0)


@pytest.mark.skipif(BACKEND != "production", reason="separate workers exist in production mode")
def test_worker_killed_mid_reply_with_attachments(env: dict[str, str], tmp_path: Path) -> None:
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
            auth, receipt, expected = sign_in_and_send_files(client)
            seen = follow_through_a_kill(client, auth, receipt, kill_and_replace)
            kinds = [kind for _, kind, _ in seen]
            assert "reset" in kinds, kinds
            assert kinds[-1] == "done", (kinds, workers[-1].output()[-3000:])
            final = _read_until_final(client, receipt["stream_url"], auth)
            assert (final["status"], final["content"]) == ("completed", expected)
            assert_settled_once(client, auth, final)
        assert replies_in_db(env["DATABASE_URL"], receipt["message_id"]) == [
            ("completed", expected, 2)
        ]
        assert '"reply_swept"' in workers[-1].output()
    finally:
        for process in (api, *workers):
            process.kill()


@pytest.mark.skipif(BACKEND != "embedded", reason="the API process is the worker in embedded mode")
def test_api_process_killed_mid_reply_with_attachments(env: dict[str, str], tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    args = ["serve", "--port", str(port)]
    api = ServiceProcess(args, env, tmp_path, tmp_path / "api1.log")
    restarted: ServiceProcess | None = None
    try:
        api.wait_healthy(base)
        with httpx.Client(base_url=base, timeout=30.0) as client:
            auth, receipt, expected = sign_in_and_send_files(client)
            with client.stream("GET", receipt["stream_url"], headers=auth) as response:
                for _id, kind, _data in sse_events(response):
                    if kind == "delta":
                        break
                api.kill()
        restarted = ServiceProcess(args, env, tmp_path, tmp_path / "api2.log")
        restarted.wait_healthy(base)
        with httpx.Client(base_url=base, timeout=30.0) as client:
            final = _read_until_final(client, receipt["stream_url"], auth)
            assert (final["status"], final["content"]) == ("completed", expected), (
                restarted.output()[-3000:]
            )
            assert_settled_once(client, auth, final)
        assert replies_in_db(env["DATABASE_URL"], receipt["message_id"]) == [
            ("completed", expected, 2)
        ]
    finally:
        for process in (api, restarted):
            if process is not None:
                process.kill()
