"""`make postman`: run the Postman collection with newman against a fresh, throwaway server.

Starts `gemini-backend serve` in embedded mode on a free port with a fresh temporary DATA_DIR
and SQLite DATABASE_URL (the `make run` defaults otherwise: demo model, built-in Stripe mock,
OTPs in the response), waits for /health, runs newman with the collection and the local
environment (baseUrl pointed at the server), stops the server with SIGTERM and exits with
newman's status. The server's log is printed if newman fails. Extra arguments are passed to
newman (e.g. `--folder Auth`, `--reporters cli,json`).

The server gets a clean environment (only PATH, HOME, locale and temp-dir variables of the
caller are kept) and runs in the temporary directory, so neither exported settings nor a `./.env`
(a Gemini key, REDIS_URL, a real Stripe key...) change what the collection runs against.

Standard library only; run it with the project's venv Python (`.venv/bin/python`), whose
`bin` folder holds `gemini-backend`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
POSTMAN = ROOT / "postman"
COLLECTION = POSTMAN / "gemini-backend.postman_collection.json"
ENVIRONMENT = POSTMAN / "local.postman_environment.json"
NEWMAN = POSTMAN / "node_modules" / ".bin" / "newman"
KEPT_VARIABLES = {"PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "TEMP", "TMP"}
START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 20.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _gemini_backend() -> Path:
    for candidate in (Path(sys.executable).parent, ROOT / ".venv" / "bin"):
        command = candidate / "gemini-backend"
        if command.exists():
            return command
    raise SystemExit("gemini-backend is not installed: run `make postman` (it sets up .venv)")


def _server_env(workdir: Path, port: int) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key.upper() in KEPT_VARIABLES}
    env.update(
        ENVIRONMENT="development",
        HOST="127.0.0.1",
        PORT=str(port),
        PUBLIC_BASE_URL=f"http://127.0.0.1:{port}",
        DATA_DIR=str(workdir / "data"),
        DATABASE_URL=f"sqlite:///{workdir / 'db' / 'gemini_backend.db'}",
        AI_PROVIDER="demo",
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
    )
    return env


def _wait_healthy(server: subprocess.Popen[bytes], base_url: str) -> bool:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    while time.monotonic() < deadline:
        if server.poll() is not None:
            return False
        try:
            with opener.open(f"{base_url}/health", timeout=2) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    return False


def _stop(server: subprocess.Popen[bytes]) -> int | None:
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            print("the server did not stop after SIGTERM; killing it", file=sys.stderr)
            server.kill()
            server.wait()
    return server.returncode


def _print_log(log_path: Path) -> None:
    print("\n" + "=" * 30 + " server log " + "=" * 30, flush=True)
    print(log_path.read_text(errors="replace"), flush=True)
    print("=" * 72, flush=True)


def main() -> int:
    if not NEWMAN.exists():
        print(f"{NEWMAN} is missing: run `make postman` (npm ci --prefix postman)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="gb-postman-") as tmp:
        workdir = Path(tmp)
        (workdir / "db").mkdir()
        port = _free_port()
        base_url = f"http://127.0.0.1:{port}"
        log_path = workdir / "server.log"
        print(f"starting gemini-backend on {base_url} (fresh database in {workdir})", flush=True)
        with log_path.open("wb") as log:
            server = subprocess.Popen(  # noqa: S603
                [str(_gemini_backend()), "serve", "--host", "127.0.0.1", "--port", str(port)],
                cwd=workdir,
                env=_server_env(workdir, port),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            if not _wait_healthy(server, base_url):
                print("the server did not become healthy", file=sys.stderr)
                _stop(server)
                _print_log(log_path)
                return 1
            newman_env = dict(
                os.environ, NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost"
            )
            status = subprocess.call(  # noqa: S603
                [
                    str(NEWMAN),
                    "run",
                    str(COLLECTION),
                    "--environment",
                    str(ENVIRONMENT),
                    "--env-var",
                    f"baseUrl={base_url}",
                    "--timeout-request",
                    "60000",
                    *sys.argv[1:],
                ],
                cwd=ROOT,
                env=newman_env,
            )
        finally:
            stopped = _stop(server)
        if status != 0:
            _print_log(log_path)
            print(f"newman failed (exit status {status})", file=sys.stderr)
        elif stopped != 0:
            print(f"note: the server exited with status {stopped} after SIGTERM", file=sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())
