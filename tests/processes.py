"""Running the service's real processes (`gemini-backend serve | worker`) in tests."""

from __future__ import annotations

import contextlib
import os
import random
import resource
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gemini_backend.config import Settings

SCRIPT = Path(sys.executable).parent / "gemini-backend"
START_TIMEOUT = 60.0  # a loaded 2-core machine took over 30 s to import and start one
STOP_TIMEOUT = 15.0


def _below_ephemeral_ports() -> range:
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return range(max(1024, low - 12000), low)


def free_port() -> int:
    """A free port below the kernel's ephemeral range: a port the kernel hands out (bind to 0)
    can become the source port of any outgoing connection before the server binds it, and
    both test modes run at once making thousands of them."""
    ports = _below_ephemeral_ports()
    rng = random.Random(f"{os.getpid()}-{time.monotonic_ns()}")
    for _ in range(200):
        port = rng.choice(ports)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port in {ports}")


def clean_env(**values: str) -> dict[str, str]:
    """The current environment without any setting of the service, plus `values`."""
    names = {name.upper() for name in Settings.model_fields}
    env = {k: v for k, v in os.environ.items() if k.upper() not in names}
    env.update(values)
    return env


def service_env(
    backend: str,
    *,
    database_url: str,
    redis_url: str | None,
    tmp_path: Path,
    **values: str,
) -> dict[str, str]:
    """The environment of a service process of this test: the test's database (a SQLite file
    in tmp_path when embedded), its own Redis key prefix in production mode."""
    env = {
        "DATA_DIR": str(tmp_path / "data"),
        "LOG_FORMAT": "json",
        # The test's clients all sign in from 127.0.0.1 (its own tests set a limit).
        "AUTH_ATTEMPTS_PER_IP_PER_MINUTE": "1000000",
        **values,
    }
    if backend == "production":
        assert redis_url is not None
        env.update(
            DATABASE_URL=database_url,
            REDIS_URL=redis_url,
            REDIS_KEY_PREFIX=f"gbtest:{uuid.uuid4().hex[:12]}",
        )
    else:
        env["DATABASE_URL"] = f"sqlite+aiosqlite:///{tmp_path / 'service.db'}"
    return clean_env(**env)


class ServiceProcess:
    """One `gemini-backend` process with its output in a log file."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path, log: Path) -> None:
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [str(SCRIPT), *args], env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]

    def wait_logged(self, event: str, timeout: float = START_TIMEOUT) -> str:
        """The log line of `event`, once the process has written it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = [line for line in self.output().splitlines() if f'"{event}"' in line]
            if lines:
                return lines[0]
            assert self.process.poll() is None, self.output()
            time.sleep(0.1)  # polling the log file for a line, not timing anything
        pytest.fail(f"no {event} line within {timeout}s:\n{self.output()}")

    def wait_healthy(self, base_url: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        with httpx.Client(base_url=base_url, timeout=2.0) as client:
            while True:
                try:
                    if client.get("/health").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"no /health answer in time:\n{self.output()}")
                # Waiting on the process paces the polling and notices a crash at once.
                try:
                    code = self.process.wait(timeout=0.1)
                except subprocess.TimeoutExpired:
                    continue
                pytest.fail(f"the process exited with {code} before it was ready:\n{self.output()}")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as when a machine or container dies."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=STOP_TIMEOUT)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_TIMEOUT)
        return self.process.returncode


@contextlib.contextmanager
def running_service(
    backend: str, env: dict[str, str], tmp_path: Path, port: int
) -> Iterator[ServiceProcess]:
    """`serve` on `port` (migrating its fresh SQLite file when embedded; the test database is
    migrated already in production mode) plus, in production mode, one `worker`. Yields the
    API process once it answers /health; kills everything afterwards."""
    migrate = ["--no-migrate"] if backend == "production" else []
    api = ServiceProcess(
        ["serve", "--port", str(port), *migrate], env, tmp_path, tmp_path / "api.log"
    )
    processes = [api]
    if backend == "production":
        processes.append(ServiceProcess(["worker"], env, tmp_path, tmp_path / "worker.log"))
    try:
        api.wait_healthy(f"http://127.0.0.1:{port}")
        yield api
    finally:
        for process in processes:
            process.kill()


@contextlib.contextmanager
def open_files_limit(wanted: int) -> Iterator[None]:
    """Raise this process's open-files limit (inherited by the servers it starts)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, wanted)), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
