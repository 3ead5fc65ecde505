"""Run the whole suite twice: embedded (SQLite, in-process) and production (PostgreSQL + Redis).

Without PostgreSQL/Redis the production half is skipped with a loud warning, except under
CI=true, where a missing service fails the run. Extra arguments are passed to pytest.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

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


def _pytest(backend: str, args: list[str]) -> int:
    _banner(f"test suite, {backend} mode")
    env = dict(os.environ, GB_TEST_BACKEND=backend)
    return subprocess.call([sys.executable, "-m", "pytest", *args], env=env)  # noqa: S603


def main() -> int:
    args = sys.argv[1:]
    ci = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
    results = {"embedded": _pytest("embedded", args)}
    missing = asyncio.run(_missing_services())
    if missing:
        _banner(
            "PRODUCTION-MODE TESTS NOT RUN: services unreachable\n  "
            + "\n  ".join(missing)
            + "\nStart PostgreSQL and Redis (or set TEST_DATABASE_URL / TEST_REDIS_URL)."
        )
        if ci:
            print("CI=true: a missing service is a failure.", flush=True)
            return 1
    else:
        results["production"] = _pytest("production", args)
    _banner(
        "summary: "
        + ", ".join(f"{k} {'passed' if v == 0 else f'FAILED ({v})'}" for k, v in results.items())
    )
    return 0 if all(v == 0 for v in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
