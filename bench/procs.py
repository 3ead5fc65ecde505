"""Processes of a benchmark run (`gemini-backend serve | worker | migrate`, the bare app) and
the cleanup of everything the run creates, even when it fails."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from gemini_backend.config import Settings

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SERVICE = BIN / "gemini-backend"
NOFILE = 65536


def raise_nofile_limit() -> int:
    """Raise this process's open-file limit as far as the hard limit allows; the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = NOFILE if hard == resource.RLIM_INFINITY else min(NOFILE, hard)
    if target > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _child_setup() -> None:  # runs in the child between fork and exec: `ulimit -n`
    raise_nofile_limit()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def clean_env(**values: str) -> dict[str, str]:
    """This environment without any setting of the service (so nothing leaks in from the
    caller's shell), plus `values`."""
    names = {name.upper() for name in Settings.model_fields}
    env = {k: v for k, v in os.environ.items() if k.upper() not in names}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(values)
    return env


def rss_kb(pid: int) -> int:
    """Resident set size of a process, from /proc/<pid>/status (kB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_times(pids: list[int]) -> tuple[float, float]:
    """User and system CPU seconds consumed so far by these processes (/proc/<pid>/stat)."""
    user = system = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user += int(fields[11]) / CLOCK_TICKS
        system += int(fields[12]) / CLOCK_TICKS
    return user, system


def machine_busy(interval: float) -> float:
    """Fraction of all CPUs busy over `interval` seconds (from /proc/stat)."""

    def sample() -> tuple[int, int]:
        values = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = values[3] + values[4]  # idle + iowait
        return sum(values), idle

    total_a, idle_a = sample()
    time.sleep(interval)
    total_b, idle_b = sample()
    spent = total_b - total_a
    return 1.0 - (idle_b - idle_a) / spent if spent else 0.0


def pids_named(prefix: str) -> list[int]:
    """Processes whose command name starts with `prefix` (postgres, redis-server)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().startswith(prefix):
                    found.append(int(entry.name))
    return found


class CpuShares:
    """CPU seconds used by each part of the system between `__init__` and `stop()`: the API
    processes, the workers, PostgreSQL, Redis and the load client (this process)."""

    def __init__(self, api: Proc, workers: list[Proc]) -> None:
        self._groups = {
            "api": lambda: [api.pid, *api.children()],
            "workers": lambda: [w.pid for w in workers],
            "postgres": lambda: pids_named("postgres"),
            "redis": lambda: pids_named("redis-server"),
            "client": lambda: [os.getpid()],
        }
        self._start = self._now()

    def _now(self) -> dict[str, dict[int, float]]:
        return {
            name: {pid: sum(cpu_times([pid])) for pid in pids()}
            for name, pids in self._groups.items()
        }

    def stop(self) -> dict[str, float]:
        """CPU seconds per part (a process started meanwhile counts from zero)."""
        end = self._now()
        return {
            name: sum(v - self._start[name].get(pid, 0.0) for pid, v in end[name].items())
            for name in end
        }


def cpu_counters() -> tuple[int, int]:
    """All CPU time and the part of it stolen by the hypervisor, since boot (/proc/stat)."""
    values = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(values[:8]), values[7]


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


class Proc:
    """One subprocess in its own session (so it and its children are stopped together), with
    its output in a log file."""

    def __init__(
        self, name: str, argv: list[str], *, env: dict[str, str], cwd: Path, log_dir: Path
    ) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        with self.log_path.open("ab") as out:
            self.popen = subprocess.Popen(  # preexec_fn: the `ulimit -n`
                argv,
                env=env,
                cwd=cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_child_setup,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def wait_http(self, url: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0) as client:
            while True:
                try:
                    if client.get(url).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if not self.alive():
                    raise RuntimeError(
                        f"{self.name} exited with {self.popen.returncode}:\n{self.tail()}"
                    )
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} not ready after {timeout} s:\n{self.tail()}")
                time.sleep(0.1)

    def children(self) -> list[int]:
        """Direct children (the API processes of `serve --workers N`)."""
        path = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        try:
            return [int(x) for x in path.read_text().split()]
        except OSError:
            return []

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=timeout)
        # Whatever is left of the group (children of `serve --workers N`).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)
        return self.popen.returncode

    def problems(self) -> tuple[int, dict[str, int]]:
        """Log lines at warning level or above (JSON logs), counted by event and error class."""
        count = 0
        kinds: dict[str, int] = {}
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return 0, {}
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                if "Traceback" in line:
                    count += 1
                    kinds["traceback"] = kinds.get("traceback", 0) + 1
                continue
            if not isinstance(record, dict):
                continue
            level = str(record.get("level", "")).lower()
            if level not in {"warning", "error", "critical", "exception"}:
                continue
            count += 1
            error = record.get("error") or ""
            exc_info = record.get("exc_info")
            if not error and isinstance(exc_info, list) and exc_info:
                error = str(exc_info[0]).removeprefix("<class '").removesuffix("'>")
            event = str(record.get("event", "")).strip()[:60]
            key = f"{level} {event}" + (f" ({error})" if error else "")
            kinds[key] = kinds.get(key, 0) + 1
        return count, kinds


class Cleanup:
    """Everything to undo at the end of the run, in reverse order, each step on its own."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log = log
        self.procs: list[Proc] = []
        self.actions: list[tuple[str, Callable[[], None]]] = []

    def track(self, proc: Proc) -> Proc:
        self.procs.append(proc)
        return proc

    def add(self, label: str, action: Callable[[], None]) -> None:
        self.actions.append((label, action))

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            if proc.alive():
                proc.stop()

    def run(self) -> None:
        self.stop_all()
        for label, action in reversed(self.actions):
            try:
                action()
            except Exception as exc:
                self.log(f"cleanup: {label} failed: {exc!r}")
        self.actions.clear()
