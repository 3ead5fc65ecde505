"""Closed-loop load at a fixed number of connections: `wrk` (C, one process, no Python in the
client's hot path) when it is installed, otherwise an asyncio client (httpx).

Both take a request table (method, path, token, body) and rotate over it, so a run spreads over
many users and rooms; both report requests per second and p50/p99 latency.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
LUA = HERE / "rotate.lua"


@dataclass(frozen=True)
class Req:
    method: str
    path: str
    token: str | None = None
    body: str | None = None


@dataclass
class LoadResult:
    tool: str
    connections: int
    seconds: float
    requests: int
    req_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    errors: int  # socket errors and timeouts
    non_2xx: int

    def as_dict(self) -> dict[str, object]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def ensure_wrk(log: Callable[[str], None]) -> str | None:
    """The path of wrk, installing the Debian package if it is missing (needs root)."""
    found = shutil.which("wrk")
    if found:
        return found
    log("wrk not found: apt-get update && apt-get install -y wrk")
    try:
        subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True, timeout=300)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "wrk"],
            check=True,
            capture_output=True,
            timeout=300,
            env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        )
    except (OSError, subprocess.SubprocessError) as exc:
        log(f"could not install wrk ({exc!r}); using the asyncio client")
        return None
    return shutil.which("wrk")


class LoadGenerator:
    def __init__(self, wrk: str | None, threads: int = 2) -> None:
        self.wrk = wrk
        self.threads = threads
        self.tool = "wrk" if wrk else "asyncio-httpx"

    def run(
        self, base_url: str, reqs: list[Req], *, connections: int, seconds: float
    ) -> LoadResult:
        if self.wrk:
            return self._wrk(base_url, reqs, connections, seconds)
        return asyncio.run(asyncio_load(base_url, reqs, connections, seconds))

    def _wrk(self, base_url: str, reqs: list[Req], connections: int, seconds: float) -> LoadResult:
        threads = max(1, min(self.threads, connections, len(reqs)))
        with tempfile.NamedTemporaryFile("w", suffix=".tsv", delete=False) as table:
            for r in reqs:
                fields = (r.method, r.path, r.token or "", r.body or "")
                if any("\t" in f or "\n" in f for f in fields):
                    raise ValueError(f"tab or newline in a request field: {r!r}")
                table.write("\t".join(fields) + "\n")
        try:
            command = [
                str(self.wrk),
                f"-t{threads}",
                f"-c{connections}",
                f"-d{max(1, round(seconds))}s",
                "--timeout",
                "10s",
                "-s",
                str(LUA),
                base_url,
                "--",
                table.name,
                str(threads),
            ]
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=seconds + 60, check=False
            )
        finally:
            Path(table.name).unlink(missing_ok=True)
        line = next((x for x in done.stdout.splitlines() if x.startswith("WRKJSON ")), None)
        if done.returncode != 0 or line is None:
            raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout}\n{done.stderr}")
        data = json.loads(line[len("WRKJSON ") :])
        elapsed = data["duration_us"] / 1e6
        return LoadResult(
            tool="wrk",
            connections=connections,
            seconds=elapsed,
            requests=data["requests"],
            req_per_s=data["requests"] / elapsed if elapsed else 0.0,
            p50_ms=data["p50_us"] / 1000,
            p90_ms=data["p90_us"] / 1000,
            p99_ms=data["p99_us"] / 1000,
            mean_ms=data["mean_us"] / 1000,
            max_ms=data["max_us"] / 1000,
            errors=data["connect"] + data["read"] + data["write"] + data["timeout"],
            non_2xx=data["status"],
        )


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


async def asyncio_load(
    base_url: str, reqs: list[Req], connections: int, seconds: float
) -> LoadResult:
    """The fallback client: `connections` coroutines, each with its own keep-alive connection."""
    latencies: list[float] = []
    errors = non_2xx = 0
    position = 0
    limits = httpx.Limits(
        max_connections=connections, max_keepalive_connections=connections, keepalive_expiry=2.0
    )
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=10.0) as client:
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal position, errors, non_2xx
            while time.perf_counter() < deadline:
                r = reqs[position % len(reqs)]
                position += 1
                headers = {"Accept": "application/json"}
                if r.token:
                    headers["Authorization"] = f"Bearer {r.token}"
                if r.body:
                    headers["Content-Type"] = "application/json"
                started = time.perf_counter()
                try:
                    response = await client.request(
                        r.method, r.path, headers=headers, content=r.body
                    )
                except httpx.HTTPError:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - started)
                if response.status_code >= 300:
                    non_2xx += 1

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - began
    ms = [x * 1000 for x in latencies]
    return LoadResult(
        tool="asyncio-httpx",
        connections=connections,
        seconds=elapsed,
        requests=len(ms),
        req_per_s=len(ms) / elapsed if elapsed else 0.0,
        p50_ms=percentile(ms, 50),
        p90_ms=percentile(ms, 90),
        p99_ms=percentile(ms, 99),
        mean_ms=sum(ms) / len(ms) if ms else 0.0,
        max_ms=max(ms, default=0.0),
        errors=errors,
        non_2xx=non_2xx,
    )
