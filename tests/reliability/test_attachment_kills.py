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
from tests.processes import service_env
from tests.reliability.kills import (
    api_and_workers,
    follow_through_a_kill,
    killed_mid_reply_and_restarted,
    read_until_final,
    replies_in_db,
    sign_in_with_a_room,
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


PNG, PDF = files.png(), files.pdf()
EXPECTED = (
    f'Demo reply (context: 0 earlier messages []) to: "{QUESTION}" '
    f"[attachments: photo.png image/png {len(PNG)} B, scan.pdf application/pdf {len(PDF)} B]"
)


def sign_in_and_send_files(client: httpx.Client) -> tuple[dict[str, str], dict]:
    """A new user's message with a PNG and a PDF: (auth, receipt)."""
    auth, room = sign_in_with_a_room(client)
    ids = []
    for name, data in (("photo.png", PNG), ("scan.pdf", PDF)):
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
    return auth, sent.json()


def assert_settled_once(client: httpx.Client, auth: dict[str, str], final: dict) -> None:
    """The month's tokens are the one reply's, counted once, nothing left reserved."""
    usage = final["usage"]
    spent = usage["prompt_tokens"] + usage["output_tokens"] + usage["thinking_tokens"]
    tokens = client.get("/user/usage", headers=auth).json()["monthly_tokens"]
    assert (tokens["used"], tokens["reserved"]) == (spent, 0)


@pytest.mark.skipif(BACKEND != "production", reason="separate workers exist in production mode")
def test_worker_killed_mid_reply_with_attachments(env: dict[str, str], tmp_path: Path) -> None:
    with (
        api_and_workers(env, tmp_path) as stack,
        httpx.Client(base_url=stack.base, timeout=30.0) as client,
    ):
        auth, receipt = sign_in_and_send_files(client)
        seen = follow_through_a_kill(client, auth, receipt, stack.replace_first_worker)
        kinds = [kind for _, kind, _ in seen]
        assert "reset" in kinds, kinds
        assert kinds[-1] == "done", (kinds, stack.workers[-1].output()[-3000:])
        final = read_until_final(client, receipt["stream_url"], auth)
        assert (final["status"], final["content"]) == ("completed", EXPECTED)
        assert_settled_once(client, auth, final)
        assert '"reply_swept"' in stack.workers[-1].output()
    assert replies_in_db(env["DATABASE_URL"], receipt["message_id"]) == [("completed", EXPECTED, 2)]


@pytest.mark.skipif(BACKEND != "embedded", reason="the API process is the worker in embedded mode")
def test_api_process_killed_mid_reply_with_attachments(env: dict[str, str], tmp_path: Path) -> None:
    with killed_mid_reply_and_restarted(env, tmp_path, sign_in_and_send_files) as (
        client,
        restarted,
        auth,
        receipt,
    ):
        final = read_until_final(client, receipt["stream_url"], auth)
        assert (final["status"], final["content"]) == ("completed", EXPECTED), restarted.output()[
            -3000:
        ]
        assert_settled_once(client, auth, final)
    assert replies_in_db(env["DATABASE_URL"], receipt["message_id"]) == [("completed", EXPECTED, 2)]
