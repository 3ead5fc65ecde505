"""Run the whole suite twice: embedded (SQLite, in-process) and production (PostgreSQL + Redis),
as two concurrent pytest processes (GB_TEST_SEQUENTIAL=1: one after the other, output live).

Without PostgreSQL/Redis the production half is skipped with a loud warning, except under
CI=true, where a missing service fails the run. Extra arguments are passed to pytest.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_DATABASE = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS = "redis://127.0.0.1:6379/15"


def _banner(text: str) -> None:
    line = "=" * 78
    print(f"\n{line}\n{text}\n{line}", flush=True)


async def _check_postgres(url: str) -> str | None:
    import asyncpg

    try:
        conn = await asyncio.wait_for(
            asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1)), 5
        )
        await conn.close()
    except Exception as exc:
        return f"PostgreSQL at {url}: {exc!r}"
    return None


async def _check_redis(url: str) -> str | None:
    from redis.asyncio import Redis

    client = Redis.from_url(url, socket_connect_timeout=5)
    try:
        await client.ping()
    except Exception as exc:
        return f"Redis at {url}: {exc!r}"
    finally:
        await client.aclose()
    return None


async def _missing_services() -> list[str]:
    database = os.environ.get("TEST_DATABASE_URL", DEFAULT_DATABASE)
    redis_url = os.environ.get("TEST_REDIS_URL", DEFAULT_REDIS)
    problems = await asyncio.gather(_check_postgres(database), _check_redis(redis_url))
    return [p for p in problems if p]


def _env(backend: str) -> dict[str, str]:
    """The environment of a mode's pytest processes. They write bytecode caches whatever
    PYTHONDONTWRITEBYTECODE says (`__pycache__` is git-ignored): without them each process
    compiles every module it imports, and pytest rewrites every test module again, at every
    run (15% of `make test-fast`'s CPU, tests/README.md)."""
    env = dict(os.environ, GB_TEST_BACKEND=backend)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def _pytest(backend: str, args: list[str]) -> int:
    _banner(f"test suite, {backend} mode")
    env = _env(backend)
    command = [sys.executable, "-m", "pytest", *_mode_args(args)]
    return subprocess.call(command, env=env)  # noqa: S603


def _mode_args(args: list[str]) -> list[str]:
    """GB_TEST_PROCESSES=N (`make test-fast`: 2) runs each mode in N pytest-xdist processes:
    much of a test's time is spent waiting (on PostgreSQL, Redis, SQLite's thread, a loopback
    server), and each process has a database of its own (tests/conftest.py)."""
    processes = int(os.environ.get("GB_TEST_PROCESSES", "1"))
    return ["-n", str(processes), *args] if processes > 1 else args


def _both_at_once(args: list[str]) -> dict[str, int]:
    """Both modes as two concurrent pytest processes (most of a test's time is spent waiting on
    servers, databases and subprocesses, so the two overlap well). Each one's output goes to a
    file and is printed whole when it ends; a line a minute says what is still running."""
    logs = Path(tempfile.mkdtemp(prefix="gb-tests-"))
    running: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
    for backend in ("embedded", "production"):
        log = logs / f"{backend}.log"
        env = _env(backend)
        command = [
            sys.executable,
            "-m",
            "pytest",
            f"--basetemp={logs / backend}",
            "-o",
            f"cache_dir=.pytest_cache/{backend}",
            *_mode_args(args),
        ]
        with log.open("wb") as out:
            process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)  # noqa: S603
        running[backend] = (process, log)
    print(f"embedded and production modes running at once; logs in {logs}", flush=True)
    results: dict[str, int] = {}
    started = time.monotonic()
    report_at = started + 60
    while running:
        for backend, (process, log) in list(running.items()):
            try:
                code = process.wait(timeout=1)
            except subprocess.TimeoutExpired:
                continue
            _banner(f"test suite, {backend} mode")
            sys.stdout.write(log.read_text(errors="replace"))
            sys.stdout.flush()
            results[backend] = code
            del running[backend]
        if running and time.monotonic() >= report_at:
            report_at += 60
            minutes = round((time.monotonic() - started) / 60)
            print(f"... {minutes} min: still running {', '.join(running)}", flush=True)
    if not any(results.values()):
        shutil.rmtree(logs, ignore_errors=True)
    return {k: results[k] for k in ("embedded", "production")}


def main() -> int:
    args = sys.argv[1:]
    ci = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
    missing = asyncio.run(_missing_services())
    if missing:
        results = {"embedded": _pytest("embedded", args)}
        _banner(
            "PRODUCTION-MODE TESTS NOT RUN: services unreachable\n  "
            + "\n  ".join(missing)
            + "\nStart PostgreSQL and Redis (or set TEST_DATABASE_URL / TEST_REDIS_URL)."
        )
        if ci:
            print("CI=true: a missing service is a failure.", flush=True)
            return 1
    elif os.environ.get("GB_TEST_SEQUENTIAL"):
        results = {backend: _pytest(backend, args) for backend in ("embedded", "production")}
    else:
        results = _both_at_once(args)
    _banner(
        "summary: "
        + ", ".join(f"{k} {'passed' if v == 0 else f'FAILED ({v})'}" for k, v in results.items())
    )
    return 0 if all(v == 0 for v in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
