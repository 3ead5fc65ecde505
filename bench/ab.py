"""Same-stack A/B: the old and the new code of gemini-backend, one API process each, on one
PostgreSQL database and one Redis key prefix, loaded in turn (old/new, new/old, ...), at one
time on this machine.

    .venv/bin/python -m bench.ab --old <git-rev> --new <git-rev-or-worktree>
        [--endpoints me,list,send] [--rounds N] [--label NAME]

A revision is checked out into a temporary `git worktree`; a directory is used as it is. Each
side runs on this venv's interpreter with its own `src` first on PYTHONPATH (checked: the
processes report which `gemini_backend` they imported), or on a venv of its own when its locked
runtime dependencies differ from this venv's. The database is migrated with the new side's
migrations only; the old side's schema (migrated into a scratch database) must be contained in
it, and a column the new side adds to an existing table as NOT NULL without a default stops the
run. The product limits are lifted as `make bench` lifts them; workers run only while the
seeded replies are generated, so the send measures the API's own cost.

Prints a table and writes bench/results/ab-<date>-<label>.json. Everything it creates (processes,
worktrees, venvs, the databases, the Redis keys) is removed at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import re
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import redis
from packaging.markers import Marker
from packaging.utils import canonicalize_name
from packaging.version import Version

from bench.api import Api, User, bounded
from bench.load import LoadGenerator, LoadResult, Req, ensure_wrk
from bench.procs import CLOCK_TICKS, ROOT, Cleanup, Proc, clean_env, cpu_times, free_port
from bench.procs import machine_busy as busy_over
from bench.run import LIFTED, check_header, delete_redis_prefix, pg_admin, pg_url, setup_users

HERE = Path(__file__).resolve().parent
T0 = time.monotonic()

# The served process says which package it imported before it starts serving.
LAUNCHER = (
    "import sys, gemini_backend\n"
    "print('ab-import ' + gemini_backend.__file__, flush=True)\n"
    "from gemini_backend.cli import main\n"
    "sys.argv = ['gemini-backend', *sys.argv[1:]]\n"
    "sys.exit(main())\n"
)


def log(message: str) -> None:
    print(f"[{time.monotonic() - T0:7.1f}s] {message}", flush=True)


# --- what is measured ------------------------------------------------------------------------
# The first room of each user is read by both sides; the send writes into a room of each side
# (old: the second, new: the third), so each side's sends build on a history it wrote itself.
SIDE_ROOM = {"old": 1, "new": 2}
ROOMS = 1 + len(SIDE_ROOM)
# The first user also has SPREAD rooms per side after those, for one user's sends spread over
# many rooms (`send1x32`): room index 1 (old) takes the first SPREAD, 2 (new) the next.
SPREAD = 32


def spread_rooms(user: User, room: int) -> list[int]:
    first = ROOMS + (room - 1) * SPREAD
    return user.rooms[first : first + SPREAD]


@dataclass(frozen=True)
class Endpoint:
    key: str
    label: str
    requests: Callable[[list[User], int], list[Req]]  # (users, the side's room index)
    cached_list: bool = False  # fill and check the list cache of each process first
    writes: bool = False  # sample what PostgreSQL's backends wait on during the load


def _sends(user: User, rooms: list[int]) -> list[Req]:
    return [Req("POST", f"/chatroom/{r}/message", user.token, SEND_BODY) for r in rooms]


SEND_BODY = json.dumps({"content": "What is the capital of France? Answer in one line."})

# In the order they run: the reads before the send, which changes the rooms.
ENDPOINTS = {
    e.key: e
    for e in (
        Endpoint("health", "GET /health", lambda users, _: [Req("GET", "/health")]),
        Endpoint(
            "me",
            "GET /user/me",
            lambda users, _: [Req("GET", "/user/me", u.token) for u in users],
        ),
        Endpoint(
            "list",
            "GET /chatroom (cached)",
            lambda users, _: [Req("GET", "/chatroom", users[0].token)],
            cached_list=True,
        ),
        Endpoint(
            "room",
            "GET /chatroom/{id}",
            lambda users, _: [Req("GET", f"/chatroom/{u.rooms[0]}", u.token) for u in users],
        ),
        Endpoint(
            "send",
            "POST /chatroom/{id}/message",
            lambda users, room: [
                Req("POST", f"/chatroom/{u.rooms[room]}/message", u.token, SEND_BODY) for u in users
            ],
            writes=True,
        ),
        Endpoint(
            "send32",
            "POST /chatroom/{id}/message, 32 users",
            lambda users, room: [r for u in users[:32] for r in _sends(u, [u.rooms[room]])],
            writes=True,
        ),
        Endpoint(
            "send1x32",
            "POST /chatroom/{id}/message, one user, 32 rooms",
            lambda users, room: _sends(users[0], spread_rooms(users[0], room)),
            writes=True,
        ),
        Endpoint(
            "send1",
            "POST /chatroom/{id}/message, one user, one room",
            lambda users, room: _sends(users[0], [users[0].rooms[room]]),
            writes=True,
        ),
    )
}


# --- the two sides ---------------------------------------------------------------------------
@dataclass
class Side:
    role: str  # "old" or "new"
    ref: str
    tree: Path
    commit: str
    subject: str
    dirty: bool
    python: str = sys.executable
    venv: str = "shared"
    proc: Proc | None = None
    base_url: str = ""
    imported_from: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def src(self) -> Path:
        return self.tree / "src"

    @property
    def name(self) -> str:
        return f"{self.role} {self.commit[:7]}{' + changes' if self.dirty else ''}"

    def argv(self, *command: str) -> list[str]:
        return [self.python, "-c", LAUNCHER, *command]

    def pids(self) -> list[int]:
        return [self.proc.pid, *self.proc.children()] if self.proc else []

    def describe(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "commit": self.commit,
            "subject": self.subject,
            "uncommitted_changes": self.dirty,
            "tree": str(self.tree),
            "venv": self.venv,
            "python": self.python,
            "imported_from": self.imported_from,
        }


def git(*args: str, cwd: Path = ROOT) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"git {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


def resolve_side(ab: AB, role: str, ref: str) -> Side:
    """A directory with src/gemini_backend is used as it is; anything else is a revision,
    checked out (detached) into a temporary worktree."""
    path = Path(ref).expanduser()
    if (path / "src" / "gemini_backend").is_dir():
        tree = path.resolve()
        commit = git("rev-parse", "HEAD", cwd=tree)
        dirty = bool(git("status", "--porcelain", cwd=tree))
    else:
        commit = git("rev-parse", "--verify", f"{ref}^{{commit}}")
        tree = ab.work / f"tree-{role}"
        git("worktree", "add", "--detach", "--quiet", str(tree), commit)
        ab.cleanup.add(f"worktree {tree}", lambda: remove_worktree(tree))
        dirty = False
    subject = git("log", "-1", "--format=%s", commit, cwd=tree)
    return Side(role, ref, tree, commit, subject, dirty)


def remove_worktree(tree: Path) -> None:
    subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)
    subprocess.run(["git", "worktree", "prune"], cwd=ROOT, check=False)


# --- dependencies: this venv, or one of the side's own -----------------------------------------
def _marker_holds(marker: str | None) -> bool:
    if not marker:
        return True
    try:
        return Marker(marker).evaluate({"extra": ""})
    except Exception:
        return True


def runtime_pins(lock: Path) -> dict[str, set[str]]:
    """The versions uv.lock pins for the project's runtime dependencies (no extras of its own,
    such as dev), followed through the lock's dependency graph on this platform."""
    packages: dict[str, list[dict[str, Any]]] = {}
    root: dict[str, Any] | None = None
    for package in tomllib.loads(lock.read_text())["package"]:
        packages.setdefault(canonicalize_name(package["name"]), []).append(package)
        source = package.get("source", {})
        if source.get("editable") == "." or source.get("virtual") == ".":
            root = package
    if root is None:
        raise SystemExit(f"{lock}: no entry for the project itself")
    pins: dict[str, set[str]] = {}
    todo = list(root.get("dependencies", []))
    seen: set[tuple[str, tuple[str, ...]]] = set()
    while todo:
        dep = todo.pop()
        if not _marker_holds(dep.get("marker")):
            continue
        name, extras = canonicalize_name(dep["name"]), tuple(dep.get("extra", []))
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        for package in packages.get(name, []):
            pins.setdefault(name, set()).add(package["version"])
            todo.extend(package.get("dependencies", []))
            for extra in extras:
                todo.extend(package.get("optional-dependencies", {}).get(extra, []))
    return pins


def venv_mismatches(lock: Path, other: Path | None = None) -> list[str]:
    """The side's locked runtime packages this venv lacks or has at another version, and those
    only the other side locks that are installed here (a package one side adds, such as a
    parser redis-py picks up when present, would change the other side too)."""
    wrong = []
    pins = runtime_pins(lock)
    if other is not None and other.exists():
        for name in sorted(set(runtime_pins(other)) - set(pins)):
            if (have := _installed(name)) is not None:
                wrong.append(f"{name} (not locked, here {have})")
    for name, versions in sorted(pins.items()):
        locked = "/".join(sorted(versions))
        if (have := _installed(name)) is None:
            wrong.append(f"{name} (locked {locked}, not installed)")
        elif all(Version(have) != Version(v) for v in versions):
            wrong.append(f"{name} (locked {locked}, here {have})")
    return wrong


def _installed(name: str) -> str | None:
    """The version of `name` in this venv, or None."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def choose_python(ab: AB, side: Side, other: Side) -> None:
    lock = side.tree / "uv.lock"
    mode = ab.args.venv
    if mode == "auto":
        if not lock.exists():
            raise SystemExit(f"{side.name}: no uv.lock; use --venv shared to run it on this venv")
        wrong = venv_mismatches(lock, other.tree / "uv.lock")
        side.extra["dependency_differences"] = wrong
        mode = "own" if wrong else "shared"
        if wrong:
            log(f"{side.name}: dependencies differ from this venv: {', '.join(wrong[:8])}")
    if mode == "own":
        side.python = make_venv(ab, side)
        side.venv = "own"
    log(f"{side.name}: {'its own venv' if side.venv == 'own' else 'this venv'} ({side.python})")


def make_venv(ab: AB, side: Side) -> str:
    """A venv with exactly what the side's uv.lock pins (no dev extra), in the temporary
    directory; its project install points at the side's tree."""
    uv = Path(sys.executable).parent / "uv"
    venv = ab.work / f"venv-{side.role}"
    log(f"{side.name}: uv sync --frozen into {venv}")
    subprocess.run(
        [
            str(uv if uv.exists() else "uv"),
            "sync",
            "--frozen",
            "--no-progress",
            "--quiet",
            "--python",
            sys.executable,
        ],
        cwd=side.tree,
        env={**os.environ, "UV_PROJECT_ENVIRONMENT": str(venv)},
        check=True,
        timeout=900,
    )
    return str(venv / "bin" / "python")


def check_import(ab: AB, side: Side) -> None:
    """The side's interpreter and PYTHONPATH really import the side's code."""
    done = subprocess.run(
        [side.python, "-c", "import gemini_backend; print(gemini_backend.__file__)"],
        env=ab.env(side),
        cwd=ab.work,
        capture_output=True,
        text=True,
        check=False,
    )
    found = done.stdout.strip()
    if done.returncode != 0 or not Path(found).is_relative_to(side.src):
        raise SystemExit(f"{side.name}: imports {found or done.stderr.strip()}, not {side.src}")
    side.imported_from = found
    log(f"{side.name}: imports {found}")


# --- the database: migrated once, by the new side ---------------------------------------------
COLUMNS = """
SELECT table_name, column_name, data_type, is_nullable = 'YES' AS nullable,
       column_default IS NOT NULL OR is_identity = 'YES' OR is_generated = 'ALWAYS' AS defaulted
FROM information_schema.columns WHERE table_schema = current_schema()
"""


async def schema_of(ab: AB, database: str) -> dict[tuple[str, str], dict[str, Any]]:
    conn = await asyncpg.connect(pg_url(ab.args, database))
    try:
        rows = await conn.fetch(COLUMNS)
    finally:
        await conn.close()
    return {(r["table_name"], r["column_name"]): dict(r) for r in rows}


def create_database(ab: AB, name: str) -> None:
    asyncio.run(pg_admin(ab.args, f'CREATE DATABASE "{name}"'))
    ab.cleanup.add(f"drop database {name}", lambda: drop_database(ab, name))


def drop_database(ab: AB, name: str) -> None:
    asyncio.run(pg_admin(ab.args, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def migrate(ab: AB, side: Side, database: str) -> None:
    done = subprocess.run(
        side.argv("migrate"),
        env=ab.env(side, DATABASE_URL=pg_url(ab.args, database)),
        cwd=ab.work,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"{side.name}: migrate failed:\n{done.stdout}\n{done.stderr}")


def prepare_database(ab: AB) -> None:
    """The run's database at the new side's schema, after checking that the old side can run
    on it: every table and column of the old schema is there, and no column added to an old
    table is NOT NULL without a default (the old code's inserts do not name it)."""
    scratch = f"{ab.database}_old"
    create_database(ab, scratch)
    migrate(ab, ab.old, scratch)
    old = asyncio.run(schema_of(ab, scratch))
    drop_database(ab, scratch)
    create_database(ab, ab.database)
    migrate(ab, ab.new, ab.database)
    new = asyncio.run(schema_of(ab, ab.database))
    ab.results["schema"] = compare_schemas(ab, old, new)


def new_migrations(ab: AB) -> list[str]:
    def names(side: Side) -> set[str]:
        return {p.name for p in (side.tree / "migrations" / "versions").glob("*.py")}

    return sorted(names(ab.new) - names(ab.old))


def compare_schemas(
    ab: AB, old: dict[tuple[str, str], dict[str, Any]], new: dict[tuple[str, str], dict[str, Any]]
) -> dict[str, Any]:
    old_tables = {t for t, _ in old}
    missing = sorted(f"{t}.{c}" for t, c in old.keys() - new.keys())
    added = {k: v for k, v in new.items() if k not in old}
    blocking = sorted(
        f"{t}.{c}"
        for (t, c), col in added.items()
        if t in old_tables and not col["nullable"] and not col["defaulted"]
    )
    retyped = sorted(
        f"{t}.{c}: {old[(t, c)]['data_type']} -> {col['data_type']}"
        for (t, c), col in new.items()
        if (t, c) in old and old[(t, c)]["data_type"] != col["data_type"]
    )
    tightened = sorted(
        f"{t}.{c}"
        for (t, c), col in new.items()
        if (t, c) in old and old[(t, c)]["nullable"] and not col["nullable"]
    )
    summary = {
        "migrated_with": ab.new.name,
        "new_migrations": new_migrations(ab),
        "new_tables": sorted({t for t, _ in added} - old_tables),
        "new_columns_in_old_tables": sorted(f"{t}.{c}" for t, c in added if t in old_tables),
        "retyped_columns": retyped,
        "columns_made_not_null": tightened,
    }
    log(f"schema: {json.dumps(summary)}")
    if missing:
        raise SystemExit(f"the new schema lacks what the old code uses: {', '.join(missing)}")
    if blocking:
        raise SystemExit(
            "the new migrations add NOT NULL columns without a default to tables the old code "
            f"writes ({', '.join(blocking)}; migrations {', '.join(summary['new_migrations'])}):"
            " the old code cannot run on the new schema, so this A/B cannot share a database"
        )
    for change in (*retyped, *tightened):
        log(f"warning: the old code runs on a changed column: {change}")
    return summary


# --- processes -------------------------------------------------------------------------------
def start_api(ab: AB, side: Side, name: str) -> tuple[Proc, str]:
    """One API process of the side (`serve --workers 1`), once it answers and has shown that
    it imported the side's code."""
    port = free_port()
    proc = ab.proc(
        f"{side.role}-{name}",
        side.argv("serve", "--port", str(port), "--workers", "1", "--no-migrate"),
        ab.env(side),
    )
    base_url = f"http://127.0.0.1:{port}"
    proc.wait_http(f"{base_url}/health")
    served = re.search(r"^ab-import (.+)$", proc.tail(100_000), re.MULTILINE)
    if not served or not Path(served.group(1)).is_relative_to(side.src):
        raise SystemExit(f"{side.name}: the API process did not import {side.src}")
    log(f"{side.name}: {name} at {base_url} (pid {proc.pid}) serving {served.group(1)}")
    return proc, base_url


def seed(ab: AB) -> list[User]:
    """Signed-in users with three rooms each (one read by both sides, one written by each),
    through an API process of the new side of its own, so the two measured processes start
    alike; --seed-sends messages in each room, answered by a worker of the new side. Both
    stop before the measured processes start: nothing else of the service runs meanwhile."""
    args = ab.args
    log(f"setup: {args.users} users x {ROOMS} rooms, {args.seed_sends} sends in each")
    proc, base_url = start_api(ab, ab.new, "setup-api")
    worker = ab.proc("new-worker", ab.new.argv("worker"), ab.env(ab.new))
    users = asyncio.run(
        setup_users(base_url, argparse.Namespace(rooms_per_user=ROOMS), args.users, 0)
    )
    asyncio.run(spread_users_rooms(base_url, users[0]))
    asyncio.run(seed_sends(base_url, users, args.seed_sends))
    if args.seed_sends and not wait_queue_empty(ab, 120):
        note(ab, "setup: the seeded replies were not all finished after 120 s")
    worker.stop()
    proc.stop()
    return users


async def spread_users_rooms(base_url: str, user: User) -> None:
    async with Api(base_url, 8) as api:
        for n in range(len(SIDE_ROOM) * SPREAD):
            user.rooms.append(await api.create_room(user.token, f"spread room {n + 1}"))


async def seed_sends(base_url: str, users: list[User], count: int) -> None:
    async with Api(base_url, 64) as api:

        async def one(user: User) -> None:
            for room in user.rooms:
                for n in range(count):
                    await api.send(user.token, room, f"seed message {n + 1} of the A/B")

        await bounded([lambda u=u: one(u) for u in users], 32)


def wait_queue_empty(ab: AB, timeout: float) -> bool:
    """Until the workers' consumer group has read and acknowledged every job."""
    client = redis.Redis.from_url(ab.args.redis_url)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            try:
                groups = client.xinfo_groups(f"{ab.prefix}:jobs")
            except redis.ResponseError:
                groups = []  # no stream or no group yet
            if groups and all(not g.get("lag") and not g.get("pending") for g in groups):
                return True
            time.sleep(0.5)
        return False
    finally:
        client.close()


def note(ab: AB, text: str) -> None:
    log(f"note: {text}")
    ab.results["notes"].append(text)


# --- measuring -------------------------------------------------------------------------------
def proc_stat() -> tuple[int, int, int]:
    """All CPU ticks, idle ticks and stolen ticks since boot (/proc/stat)."""
    values = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(values[:8]), values[3] + values[4], values[7]


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


WAITS = """SELECT coalesce(wait_event_type || ':' || wait_event, 'running'), count(*)
FROM pg_stat_activity WHERE datname = $1 AND state NOT IN ('idle') AND pid <> pg_backend_pid()
GROUP BY 1"""


class WaitSampler:
    """What the database's busy backends wait on (pg_stat_activity), sampled every 20 ms in a
    thread of its own while a load runs: the share of samples of each wait event."""

    def __init__(self, ab: AB) -> None:
        self.url, self.database = pg_url(ab.args, ab.database), ab.database
        self.counts: dict[str, int] = {}
        self.samples = 0
        self._stop = False
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        conn = await asyncpg.connect(self.url)
        try:
            while not self._stop:
                for event, n in await conn.fetch(WAITS, self.database):
                    self.counts[event] = self.counts.get(event, 0) + n
                self.samples += 1
                await asyncio.sleep(0.02)
        finally:
            await conn.close()

    def __enter__(self) -> WaitSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop = True
        self._thread.join(5)

    def figures(self) -> dict[str, float]:
        """Busy backends per sample, by wait event (e.g. Lock:tuple, IO:WALSync, running)."""
        if not self.samples:
            return {}
        top = sorted(self.counts.items(), key=lambda kv: -kv[1])
        return {event: round(n / self.samples, 2) for event, n in top}


def measure(
    ab: AB, side: Side, other: Side, reqs: list[Req], writes: bool = False
) -> dict[str, Any]:
    """One warm-up, then one measured load of `side`; its CPU per request and what the rest
    of the machine did meanwhile (and, for `writes`, what PostgreSQL's backends waited on)."""
    assert ab.loadgen is not None
    c = ab.args.connections
    if ab.args.warmup > 0:
        ab.loadgen.run(side.base_url, reqs, connections=c, seconds=ab.args.warmup)
    busy_before = busy_over(0.5)
    stat0, client0 = proc_stat(), children_cpu()
    api0, idle0 = sum(cpu_times(side.pids())), sum(cpu_times(other.pids()))
    sampler = WaitSampler(ab) if writes else contextlib.nullcontext()
    with sampler:
        result = ab.loadgen.run(side.base_url, reqs, connections=c, seconds=ab.args.duration)
    api = sum(cpu_times(side.pids())) - api0
    idle = sum(cpu_times(other.pids())) - idle0
    stat1, client = proc_stat(), children_cpu() - client0
    ticks = stat1[0] - stat0[0]
    busy = (ticks - (stat1[1] - stat0[1])) / CLOCK_TICKS  # CPU seconds, all cores
    return {
        **figures(result, api),
        "idle_side_cpu_s": round(idle, 3),
        "client_cpu_s": round(client, 3),
        "rest_of_machine_cpu_s": round(busy - api - idle - client, 3),
        "machine_busy_before": round(busy_before, 3),
        "machine_busy_during": round(busy / (ticks / CLOCK_TICKS), 3) if ticks else None,
        "steal_share": round((stat1[2] - stat0[2]) / ticks, 4) if ticks else None,
        "load_average_1m": round(os.getloadavg()[0], 2),
        **({"pg_waits": sampler.figures()} if isinstance(sampler, WaitSampler) else {}),
    }


def measure_together(ab: AB, reqs: dict[str, list[Req]]) -> list[dict[str, Any]]:
    """--together: both sides loaded at once (a client each, --connections each) over the same
    seconds, so whatever else the machine does falls on both in the same window."""
    loadgen = ab.loadgen
    assert loadgen is not None
    sides, c = (ab.old, ab.new), ab.args.connections

    def both(seconds: float) -> list[LoadResult]:
        with ThreadPoolExecutor(2) as pool:
            jobs = [
                pool.submit(loadgen.run, s.base_url, reqs[s.role], connections=c, seconds=seconds)
                for s in sides
            ]
            return [job.result() for job in jobs]

    if ab.args.warmup > 0:
        both(ab.args.warmup)
    busy_before = busy_over(0.5)
    stat0, client0 = proc_stat(), children_cpu()
    api0 = [sum(cpu_times(s.pids())) for s in sides]
    results = both(ab.args.duration)
    api = [sum(cpu_times(s.pids())) - a for s, a in zip(sides, api0, strict=True)]
    stat1, client = proc_stat(), children_cpu() - client0
    ticks = stat1[0] - stat0[0]
    busy = (ticks - (stat1[1] - stat0[1])) / CLOCK_TICKS
    shared = {
        "client_cpu_s": round(client, 3),
        "rest_of_machine_cpu_s": round(busy - sum(api) - client, 3),
        "machine_busy_before": round(busy_before, 3),
        "machine_busy_during": round(busy / (ticks / CLOCK_TICKS), 3) if ticks else None,
        "steal_share": round((stat1[2] - stat0[2]) / ticks, 4) if ticks else None,
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    return [{**figures(r, a), **shared} for r, a in zip(results, api, strict=True)]


def figures(result: LoadResult, api_cpu: float) -> dict[str, Any]:
    per_request = api_cpu * 1000 / result.requests if result.requests else None
    return {
        "req_per_s": round(result.req_per_s, 1),
        "p50_ms": round(result.p50_ms, 2),
        "p99_ms": round(result.p99_ms, 2),
        "requests": result.requests,
        "seconds": round(result.seconds, 2),
        "errors": result.errors,
        "non_2xx": result.non_2xx,
        "cpu_ms_per_request": round(per_request, 4) if per_request is not None else None,
        "api_cpu_utilisation": round(api_cpu / result.seconds, 3) if result.seconds else None,
    }


def prime_cache(ab: AB, side: Side, users: list[User]) -> None:
    one = users[0]
    check_header(side.base_url, "/chatroom", one.token, "X-Cache", "HIT")  # fills it
    if not check_header(side.base_url, "/chatroom", one.token, "X-Cache", "HIT"):
        note(ab, f"{side.name}: GET /chatroom did not answer X-Cache: HIT for a repeated read")


def run_set(ab: AB, reqs: dict[str, list[Req]], writes: bool = False) -> dict[str, Any]:
    """--rounds rounds, each one measurement of each side, the order swapped every round
    (old, new, new, old, ...), so a drift of the machine falls on both alike."""
    load_start = os.getloadavg()
    runs = []
    for number in range(ab.args.rounds):
        order = (ab.old, ab.new) if number % 2 == 0 else (ab.new, ab.old)
        quiet = wait_quiet(ab)  # a round is short: a lull in others' work is enough
        if ab.args.together:
            measured = zip((ab.old, ab.new), measure_together(ab, reqs), strict=True)
        else:
            measured = (
                (s, measure(ab, s, o, reqs[s.role], writes)) for s, o in (order, order[::-1])
            )
        for side, figures_of_side in measured:
            run = {
                "side": side.role,
                "round": number + 1,
                "machine_busy_at_round_start": round(quiet, 3),
                **figures_of_side,
            }
            runs.append(run)
            flag = (
                f"  !! {run['errors']} errors, {run['non_2xx']} non-2xx"
                if (run["errors"] or run["non_2xx"])
                else ""
            )
            log(
                f"  round {number + 1} {side.name:22s} {run['req_per_s']:9.1f} req/s  "
                f"p50 {run['p50_ms']:6.2f}  p99 {run['p99_ms']:6.2f} ms  "
                f"CPU {run['cpu_ms_per_request']} ms/req  "
                f"(busy before {run['machine_busy_before']:.0%}, "
                f"load {run['load_average_1m']}){flag}"
            )
            if run.get("pg_waits"):
                log(f"    PostgreSQL backends busy per sample: {run['pg_waits']}")
    load_end = os.getloadavg()
    return {
        "load_average_start": [round(x, 2) for x in load_start],
        "load_average_end": [round(x, 2) for x in load_end],
        "load_change_1m": round(load_end[0] - load_start[0], 2),
        "runs": runs,
    }


def wait_quiet(ab: AB) -> float:
    """Wait (up to --wait-quiet seconds) until the machine is mostly idle before a round: other
    work on it takes CPU from both sides, but not always alike. The last busy share seen."""
    began = time.monotonic()
    busy = busy_over(1.0)
    while busy > ab.args.quiet_below and time.monotonic() - began < ab.args.wait_quiet:
        busy = busy_over(2.0)
    if time.monotonic() - began > 5:
        log(f"  waited {time.monotonic() - began:.0f} s for others' work (machine {busy:.0%} busy)")
    return busy


def measure_endpoint(ab: AB, endpoint: Endpoint, users: list[User]) -> dict[str, Any]:
    """A set of rounds; again (up to --repeats times) when the load average moved by more than
    --load-change during it. The set with the steadiest load is summarised."""
    log(f"{endpoint.label}: {ab.args.rounds} rounds")
    reqs = {role: endpoint.requests(users, room) for role, room in SIDE_ROOM.items()}
    if endpoint.cached_list:
        for side in (ab.old, ab.new):
            prime_cache(ab, side, users)
    sets = []
    for attempt in range(1 + ab.args.repeats):
        sets.append(run_set(ab, reqs, endpoint.writes))
        change = sets[-1]["load_change_1m"]
        if abs(change) <= ab.args.load_change:
            break
        if attempt < ab.args.repeats:
            log(f"  the 1-minute load average moved by {change:+.2f} during the set; again")
    chosen = min(range(len(sets)), key=lambda i: abs(sets[i]["load_change_1m"]))
    summary = summarise(sets[chosen]["runs"])
    return {"label": endpoint.label, "sets": sets, "chosen_set": chosen, "summary": summary}


# --- summary ---------------------------------------------------------------------------------
FIGURES = ("cpu_ms_per_request", "req_per_s", "p50_ms", "p99_ms")


def spread(values: list[float]) -> dict[str, float]:
    median = statistics.median(values)
    return {
        "median": round(median, 4),
        "min": round(min(values), 4),
        "max": round(max(values), 4),
        "spread_pct": round((max(values) - min(values)) / median * 100, 1) if median else 0.0,
    }


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians and spreads per side; the difference of the medians, the ratio of new to old in
    each round, and the verdict: within noise when the difference of CPU per request is no
    larger than the spread between rounds of the same code."""
    by_side: dict[str, dict[str, Any]] = {}
    for role in ("old", "new"):
        mine = [r for r in runs if r["side"] == role and r["cpu_ms_per_request"] is not None]
        by_side[role] = {f: spread([r[f] for r in mine]) for f in FIGURES}
        by_side[role]["failed_requests"] = sum(r["errors"] + r["non_2xx"] for r in mine)
    old, new = by_side["old"], by_side["new"]
    rounds = sorted({r["round"] for r in runs})
    cpu = {(r["side"], r["round"]): r["cpu_ms_per_request"] for r in runs}
    ratios = [
        cpu[("new", n)] / cpu[("old", n)]
        for n in rounds
        if cpu.get(("old", n)) and cpu.get(("new", n))
    ]

    def diff(name: str) -> float:
        return round((new[name]["median"] / old[name]["median"] - 1) * 100, 1)

    noise = max(old["cpu_ms_per_request"]["spread_pct"], new["cpu_ms_per_request"]["spread_pct"])
    cpu_diff = diff("cpu_ms_per_request")
    if old["failed_requests"] or new["failed_requests"]:
        verdict = "invalid: failed requests"
    elif abs(cpu_diff) <= noise:
        verdict = "within noise"
    else:
        verdict = f"new {'costs more' if cpu_diff > 0 else 'costs less'}, beyond the noise"
    return {
        "old": old,
        "new": new,
        "cpu_diff_pct": cpu_diff,
        "req_per_s_diff_pct": diff("req_per_s"),
        "noise_pct": noise,
        "paired_cpu_ratio": spread(ratios) if ratios else None,
        "verdict": verdict,
    }


def fmt(value: float, digits: int) -> str:
    return f"{value:,.{digits}f}"


def table(ab: AB) -> list[str]:
    def cell(s: dict[str, float], digits: int) -> str:
        return f"{fmt(s['median'], digits)} ({fmt(s['min'], digits)}-{fmt(s['max'], digits)})"

    lines = [
        "| endpoint | code | API CPU ms/req | spread | req/s | p50 ms | p99 ms | verdict |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for entry in ab.results["endpoints"].values():
        s = entry["summary"]
        for role, side in (("old", ab.old), ("new", ab.new)):
            f = s[role]
            first = f"`{entry['label']}`" if role == "old" else ""
            lines.append(
                f"| {first} | {side.name} | {cell(f['cpu_ms_per_request'], 3)} | "
                f"{f['cpu_ms_per_request']['spread_pct']}% | {cell(f['req_per_s'], 0)} | "
                f"{fmt(f['p50_ms']['median'], 2)} | {fmt(f['p99_ms']['median'], 2)} | |"
            )
        ratio = s["paired_cpu_ratio"]
        paired = f" (new/old per round {ratio['min']:.3f}-{ratio['max']:.3f})" if ratio else ""
        lines.append(
            f"| | **new vs old** | **{s['cpu_diff_pct']:+.1f}%**{paired} | "
            f"noise {s['noise_pct']}% | {s['req_per_s_diff_pct']:+.1f}% | | | "
            f"**{s['verdict']}** |"
        )
    return lines


# --- the run ---------------------------------------------------------------------------------
class AB:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.cleanup = Cleanup(log)
        self.work = Path(tempfile.mkdtemp(prefix="gb-ab-"))
        self.cleanup.add("temporary directory", lambda: shutil.rmtree(self.work, True))
        self.log_dir = HERE / ".work" / "ab-logs"
        shutil.rmtree(self.log_dir, ignore_errors=True)
        self.log_dir.mkdir(parents=True)
        tag = secrets.token_hex(4)
        self.database = f"gb_ab_{tag}"
        self.prefix = f"gbab:{tag}"
        # One deployment: the two sides share the database, the Redis prefix and the secret.
        self.base_env = {
            **LIFTED,
            "ENVIRONMENT": "production",
            "JWT_SECRET": secrets.token_urlsafe(48),
            # The users sign in once, at the start: their tokens outlast a long run.
            "ACCESS_TOKEN_TTL_SECONDS": str(24 * 3600),
            "DATABASE_URL": pg_url(args, self.database),
            "REDIS_URL": args.redis_url,
            "REDIS_KEY_PREFIX": self.prefix,
        }
        self.loadgen: LoadGenerator | None = None
        self.results: dict[str, Any] = {"endpoints": {}, "notes": [], "problems": {}}
        self.old: Side
        self.new: Side

    def env(self, side: Side, **extra: str) -> dict[str, str]:
        data = self.work / f"data-{side.role}"
        data.mkdir(exist_ok=True)
        return clean_env(
            **{**self.base_env, "DATA_DIR": str(data), "PYTHONPATH": str(side.src), **extra}
        )

    def proc(self, name: str, argv: list[str], env: dict[str, str]) -> Proc:
        return self.cleanup.track(Proc(name, argv, env=env, cwd=self.work, log_dir=self.log_dir))

    def collect_problems(self) -> None:
        for proc in self.cleanup.procs:
            count, kinds = proc.problems()
            if count:
                self.results["problems"][proc.name] = {"lines": count, "kinds": kinds}


def setup(ab: AB) -> list[User]:
    args = ab.args
    ab.old = resolve_side(ab, "old", args.old)
    ab.new = resolve_side(ab, "new", args.new)
    for side, other in ((ab.old, ab.new), (ab.new, ab.old)):
        log(f"{side.name}: {side.subject} ({side.tree})")
        choose_python(ab, side, other)
        check_import(ab, side)
    prefix, url = ab.prefix, args.redis_url
    ab.cleanup.add(
        f"redis keys {prefix}*",
        lambda: log(f"cleanup: {delete_redis_prefix(url, prefix)} Redis keys deleted"),
    )
    prepare_database(ab)
    users = seed(ab)
    for side in (ab.old, ab.new):
        side.proc, side.base_url = start_api(ab, side, "api")
    return users


def machine() -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.ab",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--old", required=True, help="git revision or worktree directory")
    p.add_argument("--new", default=str(ROOT), help="git revision or worktree (default: this tree)")
    p.add_argument(
        "--endpoints",
        type=lambda s: [x for x in s.split(",") if x],
        default=["me", "list", "send"],
        help=f"comma-separated, of {', '.join(ENDPOINTS)} (run in that order)",
    )
    p.add_argument(
        "--rounds", type=int, default=6, help="rounds per set (one run of each side), even"
    )
    p.add_argument("--duration", type=float, default=8.0, help="seconds of each measured load")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up before each")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--client", choices=["auto", "wrk", "asyncio"], default="auto")
    p.add_argument("--users", type=int, default=500)
    p.add_argument("--seed-sends", type=int, default=2, help="messages sent into each room")
    p.add_argument(
        "--load-change",
        type=float,
        default=1.0,
        help="repeat a set when the 1-minute load average moved by more than this during it",
    )
    p.add_argument(
        "--together",
        action="store_true",
        help="load both sides at once in each round (not in turn): steadier on a busy machine",
    )
    p.add_argument("--repeats", type=int, default=1, help="at most this many repeated sets")
    p.add_argument(
        "--wait-quiet", type=float, default=60.0, help="max seconds to wait for idle, per round"
    )
    p.add_argument("--quiet-below", type=float, default=0.25, help="idle = CPUs busy below this")
    p.add_argument(
        "--venv",
        choices=["auto", "shared", "own"],
        default="auto",
        help="auto: a venv of its own for a side whose locked dependencies differ from this one",
    )
    p.add_argument("--label", default=None, help="results file name part (default: old-vs-new)")
    p.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    p.add_argument("--output-dir", default=str(HERE / "results"))
    args = p.parse_args(argv)
    unknown = [e for e in args.endpoints if e not in ENDPOINTS]
    if unknown or not args.endpoints:
        p.error(f"unknown endpoints {unknown}; endpoints: {', '.join(ENDPOINTS)}")
    if args.rounds < 2 or args.rounds % 2:
        # Each order as often as the other: a steady drift of the machine falls on both alike.
        p.error("--rounds must be even (old/new, new/old, ...)")
    return args


def run(ab: AB) -> None:
    args = ab.args
    wrk = None if args.client == "asyncio" else ensure_wrk(log)
    if args.client == "wrk" and wrk is None:
        raise SystemExit("wrk is required (--client wrk) but unavailable")
    ab.loadgen = LoadGenerator(wrk, threads=min(2, os.cpu_count() or 1))
    ab.results["machine"] = machine()
    log(f"machine: {ab.results['machine']}; client {ab.loadgen.tool}")
    users = setup(ab)
    for key in ENDPOINTS:  # reads first, the send last
        if key in args.endpoints:
            ab.results["endpoints"][key] = measure_endpoint(ab, ENDPOINTS[key], users)
    ab.results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]


def write(ab: AB, started: dt.datetime) -> Path:
    args = ab.args
    label = args.label or f"{ab.old.commit[:7]}-vs-{ab.new.commit[:7]}"
    ab.results.update(
        kind="same-stack A/B",
        started=started.isoformat(timespec="seconds"),
        elapsed_s=round(time.monotonic() - T0),
        command=" ".join(["python -m bench.ab", *sys.argv[1:]]),
        old=ab.old.describe(),
        new=ab.new.describe(),
        settings={k: v for k, v in vars(args).items() if k not in {"pg_url", "redis_url"}},
        client=ab.loadgen.tool if ab.loadgen else None,
        table=table(ab),
    )
    out = Path(args.output_dir) / f"ab-{started.date().isoformat()}-{label}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(ab.results, indent=2, default=str) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def interrupted(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    # SIGINT too: a shell starting the tool in the background leaves it ignored.
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    ab = AB(args)
    started = dt.datetime.now(dt.UTC)
    try:
        run(ab)
    except KeyboardInterrupt as exc:
        log(f"interrupted ({exc}); cleaning up")
        return 130
    finally:
        ab.cleanup.stop_all()
        ab.collect_problems()
        ab.cleanup.run()
    out = write(ab, started)
    machine_info = ab.results["machine"]
    print()
    print("\n".join(ab.results["table"]))
    print()
    print(
        f"load average at start {machine_info['load_average_at_start']}, "
        f"at end {machine_info['load_average_at_end']}"
    )
    for text in ab.results["notes"]:
        print(f"note: {text}")
    if ab.results["problems"]:
        print(f"problems in the processes' logs: {json.dumps(ab.results['problems'])}")
    log(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
