"""`gemini-backend migrate | serve | worker` as real processes."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gemini_backend.models import metadata
from tests.conftest import BACKEND, Storage
from tests.helpers import new_number
from tests.processes import (
    SCRIPT,
    STOP_TIMEOUT,
    ServiceProcess,
    clean_env,
    free_port,
    service_env,
)

pytestmark = pytest.mark.slow  # real `gemini-backend` processes


def run_cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_script_is_installed():
    assert SCRIPT.is_file(), f"{SCRIPT} is missing; install the project into the venv"


def test_migrate_creates_the_schema(tmp_path):
    db = tmp_path / "cli.db"
    result = run_cli(
        "migrate",
        env=clean_env(DATABASE_URL=f"sqlite:///{db}", DATA_DIR=str(tmp_path / "data")),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "latest migration" in result.stdout
    with sqlite3.connect(db) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert set(metadata.tables) <= tables
    assert "alembic_version" in tables

    # Running it again is harmless.
    again = run_cli(
        "migrate",
        env=clean_env(DATABASE_URL=f"sqlite:///{db}", DATA_DIR=str(tmp_path / "data")),
        cwd=tmp_path,
    )
    assert again.returncode == 0, again.stderr


def test_worker_refuses_embedded_mode(tmp_path):
    result = run_cli(
        "worker",
        env=clean_env(
            DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'w.db'}", DATA_DIR=str(tmp_path)
        ),
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "embedded" in result.stderr or "production mode" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_command_is_a_usage_error(tmp_path):
    result = run_cli("frobnicate", env=clean_env(), cwd=tmp_path)
    assert result.returncode == 2
    assert "usage" in result.stderr.lower()


# --- serve ---------------------------------------------------------------------------------


@pytest.fixture
def serve_env(storage: Storage, database_url: str, tmp_path: Path) -> dict[str, str]:
    return service_env(
        BACKEND, database_url=database_url, redis_url=storage.redis_url, tmp_path=tmp_path
    )


class Server(ServiceProcess):
    base_url: str


@pytest.fixture
def server(serve_env: dict[str, str], tmp_path: Path) -> Iterator[Server]:
    port = free_port()
    args = ["serve", "--host", "127.0.0.1", "--port", str(port)]
    server = Server(args, serve_env, tmp_path, tmp_path / "serve.log")
    server.base_url = f"http://127.0.0.1:{port}"
    try:
        server.wait_healthy(server.base_url)
        yield server
    finally:
        server.kill()


def _exercise(server: Server) -> None:
    with httpx.Client(base_url=server.base_url, timeout=10.0) as client:
        number = new_number()
        sent = client.post("/auth/send-otp", json={"mobile_number": number})
        assert sent.status_code == 200, sent.text
        verified = client.post(
            "/auth/verify-otp", json={"mobile_number": number, "otp": sent.json()["otp"]}
        )
        assert verified.status_code == 200, verified.text
        token = verified.json()["access_token"]
        me = client.get("/user/me", headers={"Authorization": f"Bearer {token}"})
        assert me.status_code == 200, me.text
        assert me.json()["mobile_number"] == number
        ready = client.get("/ready")
        assert ready.status_code == 200, ready.text
        assert ready.json()["mode"] == BACKEND
        assert len(me.headers["X-Request-ID"]) == 32


def test_serve_answers_over_http(server):
    _exercise(server)


def test_serve_and_worker_run_on_uvloop(server, serve_env, tmp_path):
    """Both process kinds run on uvloop (uvicorn picks it for `serve`; `worker` asks for it)."""
    assert '"event_loop": "uvloop"' in server.wait_logged("startup")
    if BACKEND != "production":
        return  # the worker is production mode's
    worker = ServiceProcess(["worker"], serve_env, tmp_path, tmp_path / "worker.log")
    try:
        assert '"event_loop": "uvloop"' in worker.wait_logged("worker_started")
    finally:
        worker.kill()


def test_serve_exits_cleanly_on_sigterm(server):
    _exercise(server)
    server.process.send_signal(signal.SIGTERM)
    try:
        code = server.process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the server did not stop within {STOP_TIMEOUT}s:\n{server.output()}")
    assert code == 0, f"exit status {code}:\n{server.output()}"


def test_serve_shuts_down_gracefully_on_sigterm(server):
    """Whatever its exit status, SIGTERM stops the server promptly, through its lifespan."""
    _exercise(server)
    server.process.send_signal(signal.SIGTERM)
    try:
        code = server.process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the server did not stop within {STOP_TIMEOUT}s:\n{server.output()}")
    assert code in (0, -signal.SIGTERM), server.output()
    output = server.output()
    assert '"shutdown"' in output, output
    assert "Traceback" not in output, output


@pytest.fixture
def slow_replies(serve_env: dict[str, str]) -> None:
    serve_env["DEMO_CHUNK_DELAY_MS"] = "1000"


@pytest.mark.usefixtures("slow_replies")
def test_sigterm_closes_open_reply_streams_and_exits_cleanly(server):
    """An SSE stream in flight (a reply still being written, or still queued when no worker
    runs) does not hold the shutdown: the stream ends and the process exits 0 promptly."""
    with httpx.Client(base_url=server.base_url, timeout=30.0) as client:
        number = new_number()
        otp = client.post("/auth/send-otp", json={"mobile_number": number}).json()["otp"]
        tokens = client.post("/auth/verify-otp", json={"mobile_number": number, "otp": otp})
        auth = {"Authorization": f"Bearer {tokens.json()['access_token']}"}
        room = client.post("/chatroom", json={}, headers=auth).json()["id"]
        sent = client.post(f"/chatroom/{room}/message", json={"content": "hi"}, headers=auth)
        assert sent.status_code == 202, sent.text
        with client.stream("GET", sent.json()["stream_url"], headers=auth) as stream:
            assert stream.status_code == 200
            lines = stream.iter_lines()
            next(lines)  # the stream is open and has started
            server.process.send_signal(signal.SIGTERM)
            for _ in lines:  # drains to the end: the server closed the stream
                pass
    try:
        code = server.process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the server did not stop within {STOP_TIMEOUT}s:\n{server.output()}")
    assert code == 0, f"exit status {code}:\n{server.output()}"
    assert "Traceback" not in server.output()
