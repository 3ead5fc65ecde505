"""`make bench`: throughput, latency, streams and the reply pipeline of gemini-backend, measured
in one run on this machine against the real processes, plus the framework ceiling and pgbench.

    .venv/bin/python -m bench.run [--profile] [--duration 8] [--skip embedded,sweep,...]

See bench/README.md for what each figure means. Everything the run creates (processes, the
PostgreSQL databases, the Redis keys under its prefix, temporary directories) is removed at the
end, also when a phase fails or the run is interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import platform
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import redis

from bench import lean, report, slo
from bench.api import Api, User, bounded, number
from bench.load import LoadGenerator, LoadResult, Req, ensure_wrk, percentile
from bench.procs import (
    BIN,
    ROOT,
    SERVICE,
    Cleanup,
    CpuShares,
    Proc,
    clean_env,
    cpu_counters,
    cpu_times,
    free_port,
    machine_busy,
    open_fds,
    raise_nofile_limit,
    rss_kb,
)
from bench.streams import close_streams, open_streams

HERE = Path(__file__).resolve().parent
PYSPY_VENV = Path("/tmp/pyspy")  # py-spy lives outside the project venv
PHASES = ("bare", "pgbench", "production", "streams", "sweep", "pipeline", "slo", "embedded")
USER_BASE = 9_000_000_000  # +919000000000...: the users of the run
OTP_BASE = 8_000_000_000  # +918000000000...: fresh numbers for the verify-otp pool
EXTRA_BASE = 7_000_000_000

# The product limits lifted for load (config.py); everything else is the service's default.
LIFTED = {
    "BASIC_DAILY_LIMIT": "1000000000",
    "SEND_PER_MINUTE": "1000000000",
    "OTP_SENDS_PER_NUMBER_PER_HOUR": "1000000",
    "OTP_SENDS_PER_IP_PER_HOUR": "1000000000",
    "OTP_RESEND_SECONDS": "0",
    # The harness signs its users in with the code from the response, and from one address.
    "OTP_RESPONSE_IN_PRODUCTION": "true",
    "AUTH_ATTEMPTS_PER_IP_PER_MINUTE": "1000000000",
    "MAX_STREAMS_PER_USER": "1000000000",  # a few users hold thousands of streams
    "DEMO_CHUNK_DELAY_MS": "0",
    "LOG_LEVEL": "WARNING",
    "LOG_FORMAT": "json",
    "AI_PROVIDER": "demo",
}

T0 = time.monotonic()


def log(message: str) -> None:
    print(f"[{time.monotonic() - T0:7.1f}s] {message}", flush=True)


class Run:
    """The state of one benchmark run."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.cleanup = Cleanup(log)
        self.work = Path(tempfile.mkdtemp(prefix="gb-bench-"))
        self.cleanup.add("temporary directory", lambda: shutil.rmtree(self.work, True))
        self.log_dir = HERE / ".work" / "logs"
        if self.log_dir.exists():
            shutil.rmtree(self.log_dir)
        self.log_dir.mkdir(parents=True)
        self.results_dir = Path(args.output_dir)
        self.results_dir.mkdir(parents=True, exist_ok=True)
        self.loadgen: LoadGenerator | None = None
        self.results: dict[str, Any] = {
            "req_per_s": {},
            "p50_ms": {},
            "p99_ms": {},
            "fraction_of_bare": {},
            "runs": {},
            "ttft_ms": {},
            "streams": {},
            "replies_per_s": {},
            "sweep": {},
            "pgbench": {},
            "profile": {},
            "problems": {},
            "errors": {},
            "notes": [],
        }
        self.procs_seen: list[Proc] = []
        self.cpu_at_start: tuple[int, int] | None = None

    # --- helpers -------------------------------------------------------------------------------
    def proc(self, name: str, argv: list[str], env: dict[str, str]) -> Proc:
        proc = self.cleanup.track(Proc(name, argv, env=env, cwd=self.work, log_dir=self.log_dir))
        self.procs_seen.append(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        proc.stop()

    def load(
        self,
        mode: str,
        endpoint: str,
        base_url: str,
        reqs: list[Req],
        *,
        server: Proc | None = None,
        warmup: bool = True,
    ) -> LoadResult:
        """One measured run (after a warm-up), with the server's CPU time per request."""
        assert self.loadgen is not None
        c = self.args.connections
        if warmup and self.args.warmup > 0:
            self.loadgen.run(base_url, reqs, connections=c, seconds=self.args.warmup)
        busy = machine_busy(0.5)
        pids = ([server.pid, *server.children()]) if server else []
        user0, sys0 = cpu_times(pids)
        result = self.loadgen.run(base_url, reqs, connections=c, seconds=self.args.duration)
        user1, sys1 = cpu_times(pids)
        cpu = (user1 - user0) + (sys1 - sys0)
        extra: dict[str, Any] = {"machine_busy_before": round(busy, 3)}
        if server and result.requests:
            extra["server_cpu_ms_per_request"] = round(cpu * 1000 / result.requests, 3)
            extra["server_cpu_utilisation"] = round(cpu / result.seconds, 3)
            extra["server_cpu_system_share"] = round((sys1 - sys0) / cpu, 3) if cpu else None
        self.record(mode, endpoint, result, extra)
        return result

    def record(
        self, mode: str, endpoint: str, result: LoadResult, extra: dict[str, Any] | None = None
    ) -> None:
        r = self.results
        extra = extra or {}
        r["req_per_s"].setdefault(mode, {})[endpoint] = round(result.req_per_s, 1)
        r["p50_ms"].setdefault(mode, {})[endpoint] = round(result.p50_ms, 2)
        r["p99_ms"].setdefault(mode, {})[endpoint] = round(result.p99_ms, 2)
        r["runs"].setdefault(mode, {})[endpoint] = {**result.as_dict(), **extra}
        if "server_cpu_ms_per_request" in extra:
            r.setdefault("server_cpu_ms_per_request", {}).setdefault(mode, {})[endpoint] = extra[
                "server_cpu_ms_per_request"
            ]
        flag = ""
        if result.errors or result.non_2xx:
            flag = f"  !! {result.errors} socket errors, {result.non_2xx} non-2xx"
        cpu = extra.get("server_cpu_ms_per_request")
        log(
            f"  {mode:10s} {endpoint:30s} {result.req_per_s:8.1f} req/s  "
            f"p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms  "
            f"server CPU {cpu if cpu is not None else '-'} ms/req "
            f"(machine busy before {extra.get('machine_busy_before', 0):.0%}){flag}"
        )

    def note(self, text: str) -> None:
        log(f"note: {text}")
        self.results["notes"].append(text)

    def collect_problems(self) -> None:
        for proc in self.procs_seen:
            count, kinds = proc.problems()
            if count:
                self.results["problems"][proc.name] = {"lines": count, "kinds": kinds}


# --- PostgreSQL and Redis ----------------------------------------------------------------------
def pg_url(args: argparse.Namespace, database: str) -> str:
    base = args.pg_url.rsplit("/", 1)[0]
    return f"{base}/{database}"


async def pg_admin(args: argparse.Namespace, sql: str) -> None:
    conn = await asyncpg.connect(args.pg_url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def pg_fetch(args: argparse.Namespace, database: str, sql: str, *params: Any) -> list[Any]:
    conn = await asyncpg.connect(pg_url(args, database))
    try:
        return list(await conn.fetch(sql, *params))
    finally:
        await conn.close()


def create_database(run: Run, name: str) -> None:
    asyncio.run(pg_admin(run.args, f'CREATE DATABASE "{name}"'))
    run.cleanup.add(
        f"drop database {name}",
        lambda: asyncio.run(pg_admin(run.args, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')),
    )


def delete_redis_prefix(redis_url: str, prefix: str) -> int:
    client = redis.Redis.from_url(redis_url)
    deleted = 0
    try:
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                deleted += client.delete(*batch)
                batch.clear()
        if batch:
            deleted += client.delete(*batch)
    finally:
        client.close()
    return deleted


# --- the service ---------------------------------------------------------------------------
class Stack:
    """One deployment of the service under test: its settings, database and processes."""

    def __init__(self, run: Run, mode: str) -> None:
        self.run = run
        self.mode = mode
        self.tag = secrets.token_hex(4)
        # A run can deploy a mode more than once (bench.scale: one stack per table size).
        self.data_dir = run.work / f"data-{mode}-{self.tag}"
        self.data_dir.mkdir()
        base = {
            **LIFTED,
            "ENVIRONMENT": "production",
            "JWT_SECRET": secrets.token_urlsafe(48),
            "DATA_DIR": str(self.data_dir),
        }
        if mode == "production":
            self.database = f"gb_bench_{self.tag}"
            self.prefix = f"gbbench:{self.tag}"
            self.redis_url = run.args.redis_url
            base.update(
                DATABASE_URL=pg_url(run.args, self.database),
                REDIS_URL=self.redis_url,
                REDIS_KEY_PREFIX=self.prefix,
            )
        else:
            base["DATABASE_URL"] = f"sqlite:///{self.data_dir / 'bench.db'}"
        self.base_env = base
        self.workers: list[Proc] = []
        self.counter = 0

    def env(self, **extra: str) -> dict[str, str]:
        return clean_env(**{**self.base_env, **extra})

    def create(self) -> None:
        if self.mode == "production":
            create_database(self.run, self.database)
            prefix, url = self.prefix, self.redis_url
            self.run.cleanup.add(
                f"redis keys {prefix}*",
                lambda: log(f"cleanup: {delete_redis_prefix(url, prefix)} Redis keys deleted"),
            )
        migrate = subprocess.run(
            [str(SERVICE), "migrate"],
            env=self.env(),
            cwd=self.run.work,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if migrate.returncode != 0:
            raise RuntimeError(f"migrate failed:\n{migrate.stdout}\n{migrate.stderr}")

    def api(
        self, *, workers: int = 1, name: str = "api", ready_timeout: float = 60.0, **extra: str
    ) -> tuple[Proc, str]:
        port = free_port()
        self.counter += 1
        proc = self.run.proc(
            f"{self.mode}-{name}-{self.counter}",
            [str(SERVICE), "serve", "--port", str(port), "--workers", str(workers), "--no-migrate"],
            self.env(**extra),
        )
        base_url = f"http://127.0.0.1:{port}"
        proc.wait_http(f"{base_url}/health", ready_timeout)
        if workers > 1:  # every process of the group is up, not just the first
            deadline = time.monotonic() + 30
            while len(proc.children()) < workers and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(1.0)
        return proc, base_url

    def start_workers(self, count: int, **extra: str) -> None:
        for _ in range(count):
            self.counter += 1
            self.workers.append(
                self.run.proc(
                    f"{self.mode}-worker-{self.counter}",
                    [str(SERVICE), "worker"],
                    self.env(**extra),
                )
            )
        time.sleep(1.5)
        for proc in self.workers:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited:\n{proc.tail()}")

    def stop_workers(self) -> None:
        for proc in self.workers:
            proc.stop()
        self.workers.clear()

    # --- database reads (production: asyncpg; embedded: sqlite3) ----------------------------
    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        if self.mode == "production":
            rows = asyncio.run(pg_fetch(self.run.args, self.database, sql, *params))
            return [tuple(r) for r in rows]
        import sqlite3

        sqlite_sql = re.sub(r"\$\d+", "?", sql)
        conn = sqlite3.connect(self.data_dir / "bench.db", timeout=30)
        try:
            return list(conn.execute(sqlite_sql, params).fetchall())
        finally:
            conn.close()

    def active_replies(self) -> int:
        rows = self.query(
            "SELECT count(*) FROM messages WHERE role = 'assistant' "
            "AND status IN ('queued', 'generating')"
        )
        return int(rows[0][0])

    def wait_replies_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.active_replies() == 0:
                return True
            time.sleep(0.5)
        return False


# --- setup of users and rooms ------------------------------------------------------------------
async def setup_users(
    base_url: str, args: argparse.Namespace, count: int, seeds: int
) -> list[User]:
    """Sign `count` users in (send-otp + verify-otp), give each `rooms_per_user` named rooms and
    `seeds` sends in the first room."""
    async with Api(base_url, 64) as api:
        users = await bounded(
            [lambda i=i: api.sign_in(number(i, USER_BASE)) for i in range(count)], 32
        )

        async def rooms(user: User) -> None:
            for r in range(args.rooms_per_user):
                user.rooms.append(await api.create_room(user.token, f"bench room {r + 1}"))

        await bounded([lambda u=u: rooms(u) for u in users], 32)

        async def seed(user: User) -> None:
            for s in range(seeds):
                await api.send(user.token, user.rooms[0], f"seed message {s + 1} of the bench")

        await bounded([lambda u=u: seed(u) for u in users], 32)
    return users


async def issue_otps(base_url: str, count: int, first: int = 0) -> list[tuple[str, str]]:
    async with Api(base_url, 64) as api:

        async def one(i: int) -> tuple[str, str]:
            mobile = number(i, OTP_BASE)
            return mobile, await api.send_otp(mobile)

        return await bounded([lambda i=i: one(i) for i in range(first, first + count)], 48)


def user_reqs(users: list[User], method: str, path: Callable[[User], str], body: str | None = None):
    return [Req(method, path(u), u.token, body) for u in users]


def check_header(base_url: str, path: str, token: str, name: str, want: str) -> bool:
    with httpx.Client(base_url=base_url, timeout=10) as client:
        response = client.get(path, headers={"Authorization": f"Bearer {token}"})
        return response.status_code == 200 and response.headers.get(name) == want


# --- profiling -------------------------------------------------------------------------------
def ensure_pyspy() -> Path | None:
    exe = PYSPY_VENV / "bin" / "py-spy"
    if exe.exists():
        return exe
    log(f"installing py-spy into {PYSPY_VENV} (a separate venv)")
    try:
        subprocess.run([sys.executable, "-m", "venv", str(PYSPY_VENV)], check=True, timeout=120)
        subprocess.run(
            [str(PYSPY_VENV / "bin" / "pip"), "install", "-q", "py-spy"], check=True, timeout=600
        )
    except (OSError, subprocess.SubprocessError) as exc:
        log(f"py-spy could not be installed: {exc!r}")
        return None
    return exe if exe.exists() else None


def profiled(run: Run, label: str, pid: int, seconds: float, load: Callable[[], Any]) -> None:
    """Record the process with py-spy while `load` runs: a flame graph (SVG) and collapsed
    stacks, from which the hottest functions of src/ are tabulated."""
    exe = ensure_pyspy()
    if exe is None:
        run.note("profile skipped: py-spy unavailable")
        return
    svg = run.results_dir / f"profile-{label}.svg"
    raw = HERE / ".work" / f"profile-{label}.collapsed.txt"
    common = ["record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "200"]
    common += ["--nonblocking", "--full-filenames"]
    spies = [
        subprocess.Popen(
            [str(exe), *common, "-o", str(svg), "--format", "flamegraph"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        ),
        subprocess.Popen(
            [str(exe), *common, "-o", str(raw), "--format", "raw"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        ),
    ]
    time.sleep(0.5)
    try:
        load()
    finally:
        for spy in spies:
            try:
                spy.wait(timeout=seconds + 30)
            except subprocess.TimeoutExpired:
                spy.kill()
    if not raw.exists():
        err = spies[1].stderr.read().decode(errors="replace") if spies[1].stderr else ""
        run.note(f"profile {label}: py-spy wrote nothing ({err.strip()[:200]})")
        return
    top = report.profile_top(raw.read_text())
    (run.results_dir / f"profile-{label}-top.txt").write_text(report.profile_text(label, top))
    run.results["profile"][label] = {
        "flamegraph": str(svg.relative_to(ROOT)) if svg.is_relative_to(ROOT) else str(svg),
        "samples": top["samples"],
        "top_self": top["self"][:15],
        "top_src_inclusive": top["src_inclusive"][:15],
        "packages_self": top["packages_self"][:12],
    }
    log(f"  profile {label}: {top['samples']} samples -> {svg.name}")


# --- phases --------------------------------------------------------------------------------
def phase_bare(run: Run) -> None:
    log("bare FastAPI/Starlette endpoint (the framework ceiling)")
    port = free_port()
    proc = run.proc(
        "bare",
        [str(BIN / "python"), str(HERE / "bare_app.py"), "--port", str(port)],
        clean_env(),
    )
    base_url = f"http://127.0.0.1:{port}"
    proc.wait_http(f"{base_url}/health")
    try:
        # The reference of every fraction, measured three times with the best run kept: on this
        # kind of machine it has varied from 6,700 to 11,700 req/s between runs of the same
        # code, and the best is the conservative reference for the service's fractions.
        attempts: list[tuple[float, LoadResult, dict[str, Any]]] = []
        for _ in range(3):
            result = run.load("bare", "GET /bare", base_url, [Req("GET", "/bare")], server=proc)
            extra = dict(run.results["runs"]["bare"]["GET /bare"])
            attempts.append((result.req_per_s, result, extra))
        _, best, extra = max(attempts, key=lambda a: a[0])
        run.record("bare", "GET /bare", best, extra)
        run.results["bare_attempts_req_per_s"] = [round(a[0], 1) for a in attempts]
        log(f"  bare reference: best of {[round(a[0]) for a in attempts]} req/s")
        run.load("bare", "GET /starlette", base_url, [Req("GET", "/starlette")], server=proc)
    finally:
        run.stop(proc)


def phase_pgbench(run: Run) -> None:
    exe = shutil.which("pgbench") or next(
        iter(sorted(Path("/usr/lib/postgresql").glob("*/bin/pgbench"))), None
    )
    if exe is None:
        run.note("pgbench not found: skipped")
        return
    name = f"gb_pgbench_{secrets.token_hex(4)}"
    create_database(run, name)
    url = pg_url(run.args, name)
    clients, seconds = run.args.pgbench_clients, run.args.pgbench_seconds
    log(f"pgbench -b tpcb-like: -i -s {run.args.pgbench_scale}, {clients} clients, {seconds} s")
    subprocess.run(
        [str(exe), "-i", "-q", "-s", str(run.args.pgbench_scale), url],
        check=True,
        capture_output=True,
        timeout=300,
    )
    done = subprocess.run(
        [
            str(exe),
            "-b",
            "tpcb-like",
            "-c",
            str(clients),
            "-j",
            str(min(clients, os.cpu_count() or 1)),
            "-T",
            str(seconds),
            url,
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 120,
        check=True,
    )
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", done.stdout)
    latency = re.search(r"latency average = ([\d.]+) ms", done.stdout)
    run.results["pgbench"] = {
        "tps": float(tps.group(1)) if tps else None,
        "latency_avg_ms": float(latency.group(1)) if latency else None,
        "clients": clients,
        "seconds": seconds,
        "scale": run.args.pgbench_scale,
    }
    log(f"  pgbench tps {run.results['pgbench']['tps']}")


def measure_endpoints(
    run: Run, mode: str, base_url: str, users: list[User], stack: Stack, api_proc: Proc
) -> None:
    """verify-otp, /user/me, cached /chatroom, /chatroom/{id} (POST message is separate)."""
    args = run.args
    # verify-otp: every request uses a fresh OTP of its own, issued beforehand.
    pool_size = args.otp_pool if mode == "production" else args.embedded_otp_pool
    log(f"  issuing {pool_size} OTPs for verify-otp")
    pairs = asyncio.run(issue_otps(base_url, pool_size))

    def verify_requests() -> list[Req]:
        return [
            Req("POST", "/auth/verify-otp", None, json.dumps({"mobile_number": m, "otp": o}))
            for m, o in pairs
        ]

    reqs = verify_requests()
    result = run.load(mode, "POST /auth/verify-otp", base_url, reqs, server=api_proc, warmup=False)
    if result.requests + 100 > len(pairs):
        # The pool ran out (a fast machine): the run reused OTPs and counted their 401s. Again,
        # with a pool sized from this run's rate (an over-estimate: the 401s were cheaper).
        used = len(pairs)  # all of them, once or more
        more = min(int(result.req_per_s * args.duration * 1.3), 20_000)
        log(f"  verify-otp: the pool ran out at {result.req_per_s:.0f} req/s; {more} new OTPs")
        pairs = asyncio.run(issue_otps(base_url, more, first=used))
        reqs = verify_requests()
        result = run.load(
            mode, "POST /auth/verify-otp", base_url, reqs, server=api_proc, warmup=False
        )
    if result.requests + 100 > len(pairs):
        run.note(
            f"{mode} verify-otp: {result.requests} requests for {len(pairs)} OTPs "
            "(the pool ran out; raise --otp-pool)"
        )
    rest = reqs[result.requests + args.connections * 2 :]
    if run.args.profile and mode == "production" and len(rest) > 200:
        # The OTPs left over (each is used once) keep the load going while py-spy records.
        seconds = min(args.duration, len(rest) / max(result.req_per_s, 1.0) * 0.8)
        profiled(
            run,
            "verify-otp",
            api_proc.pid,
            seconds,
            lambda: run.loadgen.run(base_url, rest, connections=args.connections, seconds=seconds),
        )

    # The service's own stack without auth or storage: middleware, routing, JSON.
    run.load(mode, "GET /health", base_url, [Req("GET", "/health")], server=api_proc)
    me = user_reqs(users, "GET", lambda u: "/user/me")
    run.load(mode, "GET /user/me", base_url, me, server=api_proc)
    profile_production(run, mode, "user-me", api_proc, base_url, me)

    one = users[0]
    check_header(base_url, "/chatroom", one.token, "X-Cache", "HIT")  # fills the cache
    if not check_header(base_url, "/chatroom", one.token, "X-Cache", "HIT"):
        run.note(f"{mode}: GET /chatroom did not answer X-Cache: HIT for a repeated read")
    run.load(
        mode,
        "GET /chatroom (cached)",
        base_url,
        [Req("GET", "/chatroom", one.token)],
        server=api_proc,
    )

    detail = user_reqs(users, "GET", lambda u: f"/chatroom/{u.rooms[0]}")
    run.load(mode, "GET /chatroom/{id}", base_url, detail, server=api_proc)


def measure_send(run: Run, mode: str, base_url: str, users: list[User], api_proc: Proc) -> None:
    body = json.dumps({"content": "What is the capital of France? Answer in one line."})
    sends = user_reqs(users, "POST", lambda u: f"/chatroom/{u.rooms[0]}/message", body)
    run.load(mode, "POST /chatroom/{id}/message", base_url, sends, server=api_proc)
    profile_production(run, mode, "send-message", api_proc, base_url, sends)


def profile_production(
    run: Run, mode: str, label: str, api_proc: Proc, base_url: str, reqs: list[Req]
) -> None:
    """With --profile, py-spy records the production API under the same load once more."""
    if not run.args.profile or mode != "production":
        return
    seconds = run.args.duration
    connections = run.args.connections
    profiled(
        run,
        label,
        api_proc.pid,
        seconds,
        lambda: run.loadgen.run(base_url, reqs, connections=connections, seconds=seconds),
    )


def measure_uncached(run: Run, stack: Stack, users: list[User]) -> None:
    """GET /chatroom with the cache off (CHATROOM_CACHE_TTL=0), in a separate API process."""
    proc, base_url = stack.api(name="api-nocache", CHATROOM_CACHE_TTL="0")
    try:
        one = users[0]
        if not check_header(base_url, "/chatroom", one.token, "X-Cache", "MISS"):
            run.note(f"{stack.mode}: GET /chatroom with CHATROOM_CACHE_TTL=0 was not a MISS")
        run.load(
            stack.mode,
            "GET /chatroom (uncached)",
            base_url,
            [Req("GET", "/chatroom", one.token)],
            server=proc,
        )
    finally:
        proc.stop()


def phase_production(run: Run, stack: Stack) -> list[User]:
    args = run.args
    log("production mode: PostgreSQL + Redis, one API process, workers")
    stack.create()
    stack.start_workers(args.worker_procs)
    api_proc, base_url = stack.api()
    log(f"  setup: {args.users} users x {args.rooms_per_user} rooms, {args.seed_sends} sends each")
    users = asyncio.run(setup_users(base_url, args, args.users, args.seed_sends))
    if not stack.wait_replies_idle(120):
        run.note("production setup: seeded replies still unfinished after 120 s")
    measure_endpoints(run, "production", base_url, users, stack, api_proc)
    # Sends without workers: the API's own cost, and the replies stay queued for the streams.
    stack.stop_workers()
    measure_send(run, "production", base_url, users, api_proc)
    api_proc.stop()
    measure_uncached(run, stack, users)
    return users


def queued_targets(stack: Stack, users: list[User], count: int) -> list[tuple[str, str]]:
    tokens = {u.user_id: u.token for u in users}
    rows = stack.query(
        "SELECT m.id, m.chatroom_id, c.user_id FROM messages m "
        "JOIN chatrooms c ON c.id = m.chatroom_id "
        "WHERE m.role = 'assistant' AND m.status = 'queued' ORDER BY m.id LIMIT $1",
        count,
    )
    return [
        (f"/chatroom/{room}/messages/{mid}/stream", tokens[uid])
        for mid, room, uid in rows
        if uid in tokens
    ]


def top_up(run: Run, stack: Stack, base_url: str, users: list[User], want: int) -> None:
    """Send messages (no workers run, so their replies stay queued) until `want` are queued:
    with the load generator, at the rate the send benchmark measured."""
    assert run.loadgen is not None
    body = json.dumps({"content": "A queued message for the streams test."})
    sends = user_reqs(users, "POST", lambda u: f"/chatroom/{u.rooms[0]}/message", body)
    rate = run.results["req_per_s"].get("production", {}).get("POST /chatroom/{id}/message", 50)
    for _ in range(4):
        missing = want - len(queued_targets(stack, users, want))
        if missing <= 0:
            return
        seconds = max(2.0, missing / max(rate, 10.0) * 1.1)
        log(f"  topping up: {missing} more queued replies (~{seconds:.0f} s of sends)")
        run.loadgen.run(base_url, sends, connections=run.args.connections, seconds=seconds)


def hold_streams(
    run: Run, stack: Stack, users: list[User], label: str, want: int, **extra: str
) -> None:
    """Open `want` SSE streams of queued replies on one fresh API process, hold them, and
    measure its memory before and after."""
    args = run.args
    proc, base_url = stack.api(name=f"api-streams-{label}", **extra)
    try:
        top_up(run, stack, base_url, users, want)
        targets = queued_targets(stack, users, want)
        # Warm the process a little (imports, pools), then take the baseline.
        asyncio.run(_warm(base_url, users))
        time.sleep(1.0)
        before = rss_kb(proc.pid)
        fds_before = open_fds(proc.pid)
        log(f"  [{label}] opening {len(targets)} streams (RSS before {before / 1024:.1f} MB)")
        result = asyncio.run(_hold(run, proc, base_url, targets, users[0].token))
        result.update(rss_before_kb=before, fds_before=fds_before, label=label, extra_env=extra)
        alive = result["alive_after_hold"]
        grown = result["rss_held_kb"] - before
        result["kb_per_stream"] = round(grown / alive, 2) if alive else None
        result["requested"] = want
        run.results["streams"][label] = result
        log(
            f"  [{label}] opened {result['opened']}/{len(targets)}, alive after "
            f"{args.stream_hold:.0f} s: {alive}; RSS +{grown / 1024:.1f} MB "
            f"({result['kb_per_stream']} KB/stream); /user/me during hold p50 "
            f"{result['probe_p50_ms']} ms; errors {result['open_errors']}"
        )
    finally:
        proc.stop()


async def _warm(base_url: str, users: list[User]) -> None:
    async with Api(base_url, 16) as api:
        await bounded([lambda u=u: api.get("/user/me", u.token) for u in users[:200]], 16)


async def _hold(
    run: Run, proc: Proc, base_url: str, targets: list[tuple[str, str]], token: str
) -> dict[str, Any]:
    port = int(base_url.rsplit(":", 1)[1])
    started = time.monotonic()
    streams = await open_streams("127.0.0.1", port, targets, concurrency=64)
    open_seconds = time.monotonic() - started
    opened = sum(1 for s in streams if s.opened)
    errors: dict[str, int] = {}
    for s in streams:
        if s.error:
            errors[s.error] = errors.get(s.error, 0) + 1
    await asyncio.sleep(run.args.stream_hold)
    alive = sum(1 for s in streams if s.opened and s.closed_at is None)
    rss_held = rss_kb(proc.pid)
    fds_held = open_fds(proc.pid)
    # Is the process still serving other requests while it holds the streams?
    probe: list[float] = []
    probe_failures = 0
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        for _ in range(20):
            t = time.perf_counter()
            try:
                response = await client.get(
                    "/user/me", headers={"Authorization": f"Bearer {token}"}
                )
                if response.status_code == 200:
                    probe.append((time.perf_counter() - t) * 1000)
                else:
                    probe_failures += 1
            except httpx.HTTPError:
                probe_failures += 1
    await close_streams(streams)
    await asyncio.sleep(2.0)
    return {
        "opened": opened,
        "open_seconds": round(open_seconds, 2),
        "open_errors": errors,
        "alive_after_hold": alive,
        "hold_seconds": run.args.stream_hold,
        "rss_held_kb": rss_held,
        "rss_after_close_kb": rss_kb(proc.pid),
        "fds_held": fds_held,
        "probe_p50_ms": round(percentile(probe, 50), 2) if probe else None,
        "probe_failures": probe_failures,
    }


def phase_streams(run: Run, stack: Stack, users: list[User]) -> None:
    log(f"SSE streams held by one API process (target {run.args.streams}), no workers running")
    # As shipped: waiting streams share one blocking XREAD, so no Redis setting is raised.
    hold_streams(run, stack, users, "default", run.args.streams)


def drain_backlog(run: Run, stack: Stack) -> None:
    """Start the workers on the queued backlog: the worker side's replies per second, over a
    window of --drain-seconds; the rest of the backlog is then cancelled (in the database: its
    jobs are skipped by the claim) so the next phases start from an empty queue."""
    backlog = stack.active_replies()
    if backlog == 0:
        return
    since = stack.query("SELECT now()")[0][0]
    window = run.args.drain_seconds
    log(f"  draining {backlog} queued replies with {run.args.worker_procs} workers ({window} s)")
    stack.start_workers(run.args.worker_procs)
    began = time.monotonic()
    if run.args.profile:
        # Past the workers' start-up (their imports take seconds here): from the first reply.
        while time.monotonic() < began + 60 and not first_completed(stack, since):
            time.sleep(0.2)
        seconds = run.args.duration
        profiled(run, "worker", stack.workers[0].pid, seconds, lambda: time.sleep(seconds))
    deadline = began + window
    while time.monotonic() < deadline and stack.active_replies() > 0:
        time.sleep(0.5)
    rows = stack.query(
        "SELECT count(*), min(completed_at), max(completed_at) FROM messages "
        "WHERE role = 'assistant' AND status = 'completed' AND completed_at >= $1",
        since,
    )
    count, first, last = rows[0]
    span = (last - first).total_seconds() if first and last else 0
    rate = (count - 1) / span if span > 0 else None
    left = stack.query(
        "UPDATE messages SET status = 'cancelled', error = 'cancelled', completed_at = now(), "
        "updated_at = now() WHERE role = 'assistant' AND status = 'queued' RETURNING id"
    )
    stack.wait_replies_idle(60)
    wait_queue_empty(stack, 90)
    run.results["replies_per_s"]["backlog_drain"] = round(rate, 1) if rate else None
    run.results["replies_per_s"]["backlog_drain_detail"] = {
        "backlog": backlog,
        "replies": count,
        "seconds": round(span, 2),
        "workers": run.args.worker_procs,
        "cancelled_after_window": len(left),
    }
    log(f"  backlog drain: {count} replies in {span:.1f} s = {rate or 0:.1f} replies/s")


def first_completed(stack: Stack, since: Any) -> bool:
    rows = stack.query(
        "SELECT EXISTS (SELECT 1 FROM messages WHERE role = 'assistant' "
        "AND status = 'completed' AND completed_at >= $1)",
        since,
    )
    return bool(rows[0][0])


def wait_queue_empty(stack: Stack, timeout: float) -> None:
    """Until the workers' consumer group has read and acknowledged every job."""
    client = redis.Redis.from_url(stack.redis_url)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            try:
                groups = client.xinfo_groups(f"{stack.prefix}:jobs")
            except redis.ResponseError:
                return
            if all(not g.get("lag") and not g.get("pending") for g in groups):
                return
            time.sleep(0.5)
    finally:
        client.close()


def phase_sweep(run: Run, stack: Stack, users: list[User]) -> int:
    log("worker-count sweep: GET /user/me at 32 connections, serve --workers N")
    me = user_reqs(users, "GET", lambda u: "/user/me")
    sweep: dict[str, Any] = {}
    for n in run.args.sweep:
        proc, base_url = stack.api(workers=n, name=f"api-sweep{n}")
        try:
            result = run.load(f"sweep-{n}", "GET /user/me", base_url, me, server=proc)
            sweep[str(n)] = {
                "req_per_s": round(result.req_per_s, 1),
                "p50_ms": round(result.p50_ms, 2),
                "p99_ms": round(result.p99_ms, 2),
            }
        finally:
            proc.stop()
    # The lowest p99; within 10 % of it, the higher throughput.
    best_p99 = min(v["p99_ms"] for v in sweep.values())
    close = {k: v for k, v in sweep.items() if v["p99_ms"] <= best_p99 * 1.1}
    chosen = int(max(close, key=lambda k: close[k]["req_per_s"]))
    # The per-mode result tables keep only the sweep dict.
    for n in run.args.sweep:
        for key in ("req_per_s", "p50_ms", "p99_ms", "runs"):
            run.results[key].pop(f"sweep-{n}", None)
    run.results["sweep"] = {"GET /user/me": sweep, "chosen_workers": chosen}
    log(f"  chosen: --workers {chosen}")
    return chosen


async def _end_to_end(base_url: str, users: list[User], count: int) -> dict[str, Any]:
    """`count` sends from 64 senders at once (lean client, one connection each)."""
    senders = 64
    reply_ids: list[int] = []

    async def sender(first: int) -> None:
        conn = lean.Connection.to(base_url)
        try:
            for i in range(first, count, senders):
                user = users[i % len(users)]
                receipt = await lean.send(conn, user.token, user.rooms[-1], f"end to end {i}")
                reply_ids.append(int(receipt["reply_id"]))
        finally:
            await conn.close()

    began = time.perf_counter()
    await asyncio.gather(*(sender(k) for k in range(senders)))
    sent = time.perf_counter() - began
    return {"reply_ids": reply_ids, "send_seconds": sent}


def phase_pipeline(run: Run, stack: Stack, users: list[User], api_workers: int) -> None:
    args = run.args
    log(f"reply pipeline: serve --workers {api_workers}, {args.worker_procs} worker processes")
    if not stack.workers:
        stack.start_workers(args.worker_procs)
    proc, base_url = stack.api(workers=api_workers, name="api-pipeline")
    try:
        # End to end: many sends, replies counted when their row says completed.
        count = args.replies

        def e2e() -> dict[str, Any]:
            return asyncio.run(_end_to_end(base_url, users, count))

        sent = e2e()
        finished = stack.wait_replies_idle(args.drain_timeout)
        ids = sent["reply_ids"]
        rows = stack.query(
            "SELECT count(*) FILTER (WHERE status = 'completed'), min(created_at), "
            "max(completed_at) FROM messages WHERE id = ANY($1::bigint[])",
            ids,
        )
        done, first, last = rows[0]
        span = (last - first).total_seconds() if first and last else 0
        rate = done / span if span else None
        run.results["replies_per_s"]["end_to_end"] = round(rate, 1) if rate else None
        run.results["replies_per_s"]["end_to_end_detail"] = {
            "sent": count,
            "completed": done,
            "seconds_first_send_to_last_reply": round(span, 2),
            "send_seconds": round(sent["send_seconds"], 2),
            "api_processes": api_workers,
            "worker_processes": args.worker_procs,
            "finished": finished,
        }
        log(f"  end to end: {done}/{count} replies in {span:.1f} s = {rate or 0:.1f} replies/s")

        levels = [(level, str(level), None) for level in args.ttft_levels]
        think = (args.ttft_think[0], args.ttft_think[-1])
        levels += [(level, f"{level} paced", think) for level in args.ttft_paced]
        for level, key, pause in levels:
            shares = CpuShares(proc, stack.workers)
            entry = ttft_level(run, base_url, users, level, key, pause)
            spent = shares.stop()
            if entry["samples"]:
                # Where the machine's CPU went, per message: the analysis' breakdown.
                entry["cpu_ms_per_message"] = {
                    name: round(seconds * 1000 / entry["samples"], 2)
                    for name, seconds in spent.items()
                }
                log(f"    CPU ms per message: {entry['cpu_ms_per_message']}")
    finally:
        proc.stop()


def phase_slo(run: Run, stack: Stack, users: list[User], api_workers: int) -> None:
    """Time to first token as an open-loop SLO (bench/slo.py): the capacity at p95 < 50 ms."""
    run.results["ttft_slo"] = slo.run_on(run, stack, users, api_workers)


def ttft_level(
    run: Run,
    base_url: str,
    users: list[User],
    level: int,
    key: str,
    think: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """`level` conversations at once, each sending, streaming its reply to the end, and
    sending again (at once, or `think` = a pause drawn from (low, high) seconds later, a
    person's pace); the backend-added time to first token of every message."""
    if level > len(users):
        run.note(f"ttft at {level}: only {len(users)} users; using {len(users)}")
        level = len(users)
    rounds = max(1, math.ceil(run.args.ttft_samples / level))
    if level == 1:
        rounds = run.args.ttft_samples

    async def go() -> tuple[list[Any], float]:
        async def conversation(user: User) -> list[Any]:
            conn = lean.Connection.to(base_url)  # one keep-alive connection per conversation
            pace = random.Random(user.user_id)
            done: list[Any] = []
            try:
                for i in range(rounds):
                    if think is not None:  # also before the first: the starts are spread
                        await asyncio.sleep(pace.uniform(*think))
                    done.append(await lean.converse(conn, user.token, user.rooms[-1], f"ttft {i}"))
                return done
            finally:
                await conn.close()

        began = time.perf_counter()
        per_user = await asyncio.gather(*(conversation(u) for u in users[:level]))
        elapsed = time.perf_counter() - began
        return [x for group in per_user for x in group], elapsed

    results, elapsed = asyncio.run(go())
    ok = [r for r in results if r.ok]
    failed = [r for r in results if not r.ok]
    reasons: dict[str, int] = {}
    for r in failed:
        reasons[r.error] = reasons.get(r.error, 0) + 1
    ttft = [r.ttft_ms for r in ok]
    entry = {
        "p50": round(percentile(ttft, 50), 2),
        "p95": round(percentile(ttft, 95), 2),
        "p99": round(percentile(ttft, 99), 2),
        "samples": len(ok),
        "failed": len(failed),
        "failure_reasons": reasons,
        "post_p50_ms": round(percentile([r.post_ms for r in ok], 50), 2),
        "post_p99_ms": round(percentile([r.post_ms for r in ok], 99), 2),
        "done_p50_ms": round(percentile([r.done_ms for r in ok], 50), 2),
        "done_p99_ms": round(percentile([r.done_ms for r in ok], 99), 2),
        "messages_per_s": round(len(ok) / elapsed, 1) if elapsed else None,
        "think_seconds": list(think) if think else None,
    }
    run.results["ttft_ms"][key] = entry
    log(
        f"  ttft at {key} conversations: p50 {entry['p50']} p95 {entry['p95']} "
        f"p99 {entry['p99']} ms ({len(ok)} ok, {len(failed)} failed {reasons or ''})"
    )
    return entry


def phase_embedded(run: Run) -> None:
    args = run.args
    log("embedded mode: SQLite, in-process queue/cache/throttles, one API process")
    stack = Stack(run, "embedded")
    stack.create()
    api_proc, base_url = stack.api()
    try:
        users = asyncio.run(setup_users(base_url, args, args.embedded_users, args.seed_sends))
        if not stack.wait_replies_idle(120):
            run.note("embedded setup: seeded replies still unfinished after 120 s")
        measure_endpoints(run, "embedded", base_url, users, stack, api_proc)
        measure_send(run, "embedded", base_url, users, api_proc)
        stack.wait_replies_idle(120)
    finally:
        api_proc.stop()
    measure_uncached(run, stack, users)


# --- machine -----------------------------------------------------------------------------------
def machine(run: Run) -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "client": run.loadgen.tool if run.loadgen else None,
    }

    async def pg() -> dict[str, str]:
        conn = await asyncpg.connect(run.args.pg_url)
        try:
            out = {"postgres": await conn.fetchval("SHOW server_version")}
            for name in ("fsync", "synchronous_commit", "shared_buffers", "max_connections"):
                out[f"postgres_{name}"] = await conn.fetchval(f"SHOW {name}")
            return out
        finally:
            await conn.close()

    try:
        info.update(asyncio.run(pg()))
    except Exception as exc:
        info["postgres"] = f"unreachable: {exc!r}"
    try:
        client = redis.Redis.from_url(run.args.redis_url)
        server = client.info("server")
        info["redis"] = server.get("redis_version")
        client.close()
    except Exception as exc:
        info["redis"] = f"unreachable: {exc!r}"
    if run.loadgen and run.loadgen.wrk:
        version = subprocess.run([run.loadgen.wrk, "-v"], capture_output=True, text=True)
        info["wrk"] = (version.stdout or version.stderr).splitlines()[0].strip()
    return info


def wait_quiet(run: Run) -> None:
    """Wait (up to --wait-quiet seconds) until the machine is mostly idle: other work on it
    takes CPU from the service, the database and the client alike."""
    deadline = time.monotonic() + run.args.wait_quiet
    busy = machine_busy(2.0)
    while busy > run.args.quiet_below and time.monotonic() < deadline:
        log(f"machine {busy:.0%} busy (others' work); waiting for < {run.args.quiet_below:.0%}")
        busy = machine_busy(5.0)
    run.results["machine_busy_at_start"] = round(busy, 3)
    if busy > run.args.quiet_below:
        run.note(
            f"the machine was {busy:.0%} busy with other work when the run started; "
            "figures are lower and noisier than on an idle machine"
        )


# --- main ----------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="make bench", description=__doc__)

    def ints(text: str) -> list[int]:
        return [int(x) for x in text.split(",") if x]

    def floats(text: str) -> list[float]:
        return [float(x) for x in text.split(",") if x]

    p.add_argument("--duration", type=float, default=8.0, help="seconds of each measured load")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up before each")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--client", choices=["auto", "wrk", "asyncio"], default="auto")
    p.add_argument("--users", type=int, default=500, help="signed-in users (production)")
    p.add_argument("--embedded-users", type=int, default=100)
    p.add_argument("--rooms-per-user", type=int, default=2)
    p.add_argument("--seed-sends", type=int, default=2, help="messages sent into each first room")
    p.add_argument("--otp-pool", type=int, default=2500, help="OTPs issued for verify-otp")
    p.add_argument("--embedded-otp-pool", type=int, default=1500)
    p.add_argument("--worker-procs", type=int, default=2, help="`gemini-backend worker` processes")
    p.add_argument("--streams", type=int, default=5000)
    p.add_argument("--stream-hold", type=float, default=10.0)
    p.add_argument("--replies", type=int, default=1000, help="sends of the end-to-end run")
    p.add_argument("--drain-timeout", type=float, default=120.0)
    p.add_argument("--drain-seconds", type=float, default=25.0, help="window of the backlog drain")
    p.add_argument("--ttft-levels", type=ints, default=[1, 50, 500])
    p.add_argument(
        "--ttft-paced", type=ints, default=[50], help="levels again, each conversation pausing"
    )
    p.add_argument(
        "--ttft-think", type=floats, default=[1.0, 3.0], help="the pause: low,high seconds"
    )
    p.add_argument("--ttft-samples", type=int, default=500, help="messages per TTFT level (about)")
    slo.add_arguments(p, prefix="slo-")
    p.add_argument("--sweep", type=ints, default=[1, 2, 4])
    p.add_argument("--pgbench-seconds", type=int, default=20)
    p.add_argument("--pgbench-clients", type=int, default=4)
    p.add_argument("--pgbench-scale", type=int, default=10)
    p.add_argument("--wait-quiet", type=float, default=60.0, help="max seconds to wait for idle")
    p.add_argument("--quiet-below", type=float, default=0.25, help="idle = CPUs busy below this")
    p.add_argument("--profile", action="store_true", help="py-spy flame graphs of the hot paths")
    p.add_argument("--skip", type=lambda s: [x for x in s.split(",") if x], default=[])
    p.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    p.add_argument(
        "--output-dir",
        default=str(HERE / "results"),
        help="where the results go (elsewhere, bench/README.md is left as it is)",
    )
    p.add_argument("--no-readme", action="store_true", help="do not update bench/README.md")
    p.add_argument(
        "--render", metavar="JSON", help="only rewrite the README table from a results file"
    )
    args = p.parse_args(argv)
    unknown = set(args.skip) - set(PHASES)
    if unknown:
        p.error(f"unknown phases {sorted(unknown)}; phases: {', '.join(PHASES)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        # Only regenerate the README table from a results file.
        report.update_readme(HERE / "README.md", json.loads(Path(args.render).read_text()))
        log(f"bench/README.md table regenerated from {args.render}")
        return 0
    nofile = raise_nofile_limit()
    if nofile < args.streams + 1000:
        log(f"open-file limit is {nofile}: fewer than {args.streams} streams can be held")

    def interrupted(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    run = Run(args)
    run.cpu_at_start = cpu_counters()
    started = dt.datetime.now(dt.UTC)
    status = 0
    try:
        wrk = None if args.client == "asyncio" else ensure_wrk(log)
        if args.client == "wrk" and wrk is None:
            raise SystemExit("wrk is required (--client wrk) but unavailable")
        run.loadgen = LoadGenerator(wrk, threads=min(2, os.cpu_count() or 1))
        wait_quiet(run)
        run.results["machine"] = machine(run)
        log(f"machine: {json.dumps(run.results['machine'])}")
        log(f"load client: {run.loadgen.tool}, {args.connections} connections")

        def phase(name: str, action: Callable[[], Any]) -> Any:
            if name in args.skip:
                log(f"{name}: skipped")
                return None
            began = time.monotonic()
            try:
                return action()
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                run.results["errors"][name] = f"{exc!r}"
                log(f"PHASE {name} FAILED: {exc!r}\n{traceback.format_exc()}")
                return None
            finally:
                log(f"{name}: {time.monotonic() - began:.1f} s")

        phase("bare", lambda: phase_bare(run))
        phase("pgbench", lambda: phase_pgbench(run))
        stack = Stack(run, "production")
        users = phase("production", lambda: phase_production(run, stack))
        if users:
            phase("streams", lambda: phase_streams(run, stack, users))
            phase("pipeline-drain", lambda: drain_backlog(run, stack))
            stack.stop_workers()
            chosen = phase("sweep", lambda: phase_sweep(run, stack, users)) or 1
            phase("pipeline", lambda: phase_pipeline(run, stack, users, chosen))
            phase("slo", lambda: phase_slo(run, stack, users, chosen))
        stack.stop_workers()
        run.cleanup.stop_all()
        phase("embedded", lambda: phase_embedded(run))
    except KeyboardInterrupt as exc:
        log(f"interrupted ({exc}); cleaning up")
        status = 130
    finally:
        run.cleanup.stop_all()
        run.collect_problems()
        run.cleanup.run()
    total, stolen = cpu_counters()
    if run.cpu_at_start and total > run.cpu_at_start[0]:
        # Time the hypervisor gave to other guests: the same code measures slower when it is high.
        share = (stolen - run.cpu_at_start[1]) / (total - run.cpu_at_start[0])
        run.results.setdefault("machine", {})["cpu_steal_during_run"] = round(share, 3)
    elapsed = time.monotonic() - T0
    report.finish(run.results, args=vars(args), started=started, elapsed=elapsed)
    day = started.date().isoformat()
    out = run.results_dir / f"{day}.json"
    out.write_text(json.dumps(run.results, indent=2, default=str) + "\n")
    log(f"results: {out}")
    # The README's table describes the committed results: a run written elsewhere leaves it.
    if args.no_readme or run.results_dir.resolve() != (HERE / "results").resolve():
        log("bench/README.md left as it is")
    else:
        report.update_readme(HERE / "README.md", run.results)
        log("bench/README.md table updated")
    for line in report.summary_lines(run.results):
        print(line)
    if run.results["errors"]:
        status = status or 1
    log(f"total {elapsed:.0f} s")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
