"""Cost per message as tables and backlogs grow: `python -m bench.scale` (`make bench-scale`).

For each table size N (`--rows`, default 10,000 and 10,000,000 messages), in a throwaway
PostgreSQL instance of its own (initdb + pg_ctl in a temporary directory on a free port, with
pg_stat_statements preloaded; the machine's shared PostgreSQL is not touched, and the instance
is removed at the end) and a Redis key prefix of its own:

1. a fresh database migrated by the code measured, filled to N messages by `INSERT ... SELECT
   generate_series` (the secondary indexes of `messages` dropped for the fill and built again
   after, foreign-key triggers off: the rows are consistent by construction), spread over
   N/500 users with 5 rooms each and 100 messages a room, a room's messages interleaved with
   every other room's over the whole table (the worst locality), then VACUUM ANALYZE;
2. one `gemini-backend serve` and one `gemini-backend worker`; for each backlog K (`--queued`,
   default 10 and 10,000): the worker is stopped (SIGSTOP), K messages are sent into one room
   (as issue 22 measured: a backlog in one room, so the room's conversation is as deep as the
   backlog; `--spread M`: into new rooms of M messages each, a backlog of as deep
   conversations as K = M), the worker is let go (SIGCONT) and drains them; the CPU the worker
   and the instance's PostgreSQL processes spent meanwhile (/proc/<pid>/stat; the harness's own poll
   backend left out) divided by K, and pg_stat_statements' statements of the drain. K = 10 is
   repeated `--small-rounds` times (CPU time comes in 10 ms ticks);
3. the hot statements under `EXPLAIN (ANALYZE, BUFFERS)`, each run through the code's own
   repository functions in a transaction that is rolled back: the send's statement, the claim
   with its context read, the finish, the sweeper's query, the list page and the room's reads,
   in the deep room of step 2 and in a filled room; every Seq Scan is flagged, and the buffers
   each statement touched at the largest N against the smallest.

`--src DIR` runs another tree's `src` (its migrations too) for a before/after; `--label` names
the results: bench/results/scale-<date>-<label>.json and scale-<date>-<label>-plans.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

from bench.api import Api, User, bounded
from bench.procs import BIN, ROOT, clean_env, cpu_times, free_port
from bench.run import Run, Stack, create_database, delete_redis_prefix, log, setup_users

HERE = Path(__file__).resolve().parent
PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
MESSAGES_PER_ROOM = 100
ROOMS_PER_USER = 5
FILL_CHUNK = 1_000_000
SEND_BODY = "A message of the backlog: answer in one line."
# The settings of the machine's shared instance that matter here (its shared_buffers is
# Debian's default), plus what the fill and the statistics need.
PG_SETTINGS = {
    "shared_buffers": "128MB",
    "max_connections": "200",
    "shared_preload_libraries": "pg_stat_statements",
    "pg_stat_statements.track": "all",
    "track_io_timing": "on",
    "max_wal_size": "8GB",
    "listen_addresses": "127.0.0.1",
}


# --- the PostgreSQL instance ---------------------------------------------------------------
class PgInstance:
    """A throwaway PostgreSQL cluster: initdb into a temporary directory, started on a free
    port, stopped and deleted by the run's cleanup."""

    def __init__(self, run: Run, settings: dict[str, str]) -> None:
        self.run = run
        self.settings = settings
        self.dir = Path(tempfile.mkdtemp(prefix="gb-scale-pg-", dir="/var/tmp"))
        self.data = self.dir / "data"
        self.port = free_port()
        # PostgreSQL refuses to run as root: as `postgres` then.
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _pg(self, *argv: str, timeout: float = 300) -> None:
        subprocess.run(
            [*self.as_user, *argv], check=True, capture_output=True, timeout=timeout, cwd=self.dir
        )

    def start(self) -> None:
        if self.as_user:
            entry = pwd.getpwnam("postgres")
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)
        self.run.cleanup.add("the PostgreSQL instance's directory", self._remove)
        self._pg(
            str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
            "-E", "UTF8", "--locale=C.UTF-8",
        )  # fmt: skip
        options = " ".join(f"-c {k}={v}" for k, v in self.settings.items())
        self._pg(
            str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "server.log"),
            "-w", "-o", f"-p {self.port} -k {self.dir} {options}", "start",
        )  # fmt: skip
        self.run.cleanup.add("stop the PostgreSQL instance", self.stop)
        log(f"PostgreSQL instance on port {self.port} in {self.dir}")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._pg(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def _remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def postmaster(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def pids(self) -> list[int]:
        """The postmaster and every process it started (backends, checkpointer, WAL writer,
        autovacuum, ...)."""
        main = self.postmaster()
        path = Path(f"/proc/{main}/task/{main}/children")
        try:
            return [main, *(int(x) for x in path.read_text().split())]
        except OSError:
            return [main]


# --- the fill ------------------------------------------------------------------------------
def _content(role: str) -> str:
    """SQL for a message's text from `g` (varied words, so the search index is realistic)."""
    user = (
        "'message ' || g || ' ' || left(md5(g::text), 7) || ' about ' || "
        "left(md5((g % 5000)::text), 5) || ' and ' || left(md5((g % 300)::text), 4) || "
        "' with a few more words of ordinary text'"
    )
    if role == "user":
        return user
    return (
        f"'Reply: ' || {user} || '. ' || left(md5((g % 20000)::text), 8) || "
        "' is the answer, said ' || left(md5((g % 700)::text), 6) || ' in one of ' || "
        "left(md5((g % 90)::text), 3) || ' ways; more text of an ordinary reply follows "
        "here to give it a realistic length, ' || left(md5((g * 7)::text), 9)"
    )


MESSAGE_FILL = f"""
INSERT INTO messages (id, chatroom_id, role, content, status, reply_to, parent_id, attempts,
    quota_day, model, finish_reason, created_at, updated_at, completed_at)
SELECT g, 1 + (g - 1) % $3,
    CASE WHEN ((g - 1) / $3) % 2 = 0 THEN 'user' ELSE 'assistant' END,
    CASE WHEN ((g - 1) / $3) % 2 = 0 THEN {_content("user")} ELSE {_content("assistant")} END,
    'completed',
    CASE WHEN ((g - 1) / $3) % 2 = 1 THEN g - $3 END,
    CASE WHEN g > $3 THEN g - $3 END,
    CASE WHEN ((g - 1) / $3) % 2 = 1 THEN 1 ELSE 0 END,
    CASE WHEN ((g - 1) / $3) % 2 = 1 THEN (t.at - ($4 - g) * interval '3 seconds')::date END,
    CASE WHEN ((g - 1) / $3) % 2 = 1 THEN 'demo' END,
    CASE WHEN ((g - 1) / $3) % 2 = 1 THEN 'stop' END,
    t.at - ($4 - g) * interval '3 seconds', t.at - ($4 - g) * interval '3 seconds',
    t.at - ($4 - g) * interval '3 seconds'
FROM generate_series($1::bigint, $2::bigint) AS g, (SELECT now() - interval '1 hour' AS at) AS t
"""


async def _fill_messages(url: str, first: int, last: int, rooms: int, total: int) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("SET session_replication_role = replica; SET synchronous_commit = off")
        for start in range(first, last + 1, FILL_CHUNK):
            end = min(last, start + FILL_CHUNK - 1)
            await conn.execute(MESSAGE_FILL, start, end, rooms, total)
            log(f"    messages {start:,}..{end:,}")
    finally:
        await conn.close()


async def fill(url: str, rows: int, parallel: int) -> dict[str, Any]:
    """Fill an empty, migrated database to `rows` messages (see the module docstring)."""
    rooms = max(1, rows // MESSAGES_PER_ROOM)
    users = max(1, rooms // ROOMS_PER_USER)
    began = time.monotonic()
    conn = await asyncpg.connect(url)
    timings: dict[str, float] = {}
    try:
        await conn.execute(
            "SET session_replication_role = replica; SET synchronous_commit = off; "
            "SET maintenance_work_mem = '2GB'; SET max_parallel_maintenance_workers = 2"
        )
        indexes = await conn.fetch(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'messages' "
            "AND indexname <> 'pk_messages' ORDER BY indexname"
        )
        for index in indexes:
            await conn.execute(f'DROP INDEX "{index["indexname"]}"')
        await conn.execute(
            "INSERT INTO users (id, mobile_number, created_at, updated_at) "
            "SELECT g, '+91' || (6000000000 + g), now() - interval '400 days', "
            "now() - interval '400 days' FROM generate_series(1, $1::bigint) AS g",
            users,
        )
        per_room = rows // rooms
        await conn.execute(
            "INSERT INTO chatrooms (id, user_id, name, auto_title, message_count, "
            "last_message_at, activity_at, created_at, updated_at, active_leaf_id) "
            "SELECT g, 1 + (g - 1) % $2, 'Room ' || left(md5(g::text), 6) || ' of user ' || "
            "(1 + (g - 1) % $2), false, $3, now() - interval '1 hour', now() - interval '1 hour', "
            "now() - interval '400 days', now() - interval '1 hour', "
            "(SELECT max(m) FROM generate_series(g, $4::bigint, $1::bigint) AS m) "
            "FROM generate_series(1, $1::bigint) AS g",
            rooms,
            users,
            per_room,
            rows,
        )
        timings["users_rooms_s"] = round(time.monotonic() - began, 1)
        log(f"  fill: {users:,} users, {rooms:,} rooms; {rows:,} messages in {parallel} sessions")
        step = -(-rows // parallel)
        ranges = [(1 + i * step, min(rows, (i + 1) * step)) for i in range(parallel)]
        await asyncio.gather(*(_fill_messages(url, a, b, rooms, rows) for a, b in ranges if a <= b))
        timings["messages_s"] = round(time.monotonic() - began - timings["users_rooms_s"], 1)
        built = time.monotonic()
        for index in indexes:
            at = time.monotonic()
            await conn.execute(index["indexdef"])
            log(f"    {index['indexname']} built in {time.monotonic() - at:.1f} s")
        timings["indexes_s"] = round(time.monotonic() - built, 1)
        for table in ("users", "chatrooms", "messages"):
            await conn.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                f"(SELECT max(id) FROM {table}))"
            )
        at = time.monotonic()
        await conn.execute("VACUUM (ANALYZE) users, chatrooms, messages")
        timings["vacuum_analyze_s"] = round(time.monotonic() - at, 1)
        size = await conn.fetchval("SELECT pg_total_relation_size('messages')")
    finally:
        await conn.close()
    timings["total_s"] = round(time.monotonic() - began, 1)
    return {
        "messages": rows,
        "rooms": rooms,
        "users": users,
        "messages_total_mb": round(size / 2**20),
        **timings,
    }


# --- CPU per message while one worker drains a backlog ------------------------------------
class Poller:
    """The harness's own connection: its backend's CPU is left out of PostgreSQL's."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.conn: asyncpg.Connection | None = None
        self.pid = 0

    async def __aenter__(self) -> Poller:
        self.conn = await asyncpg.connect(self.url)
        self.pid = await self.conn.fetchval("SELECT pg_backend_pid()")
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self.conn is not None
        await self.conn.close()

    async def unfinished(self, rooms: list[int]) -> int:
        assert self.conn is not None
        return int(
            await self.conn.fetchval(
                "SELECT count(*) FROM messages WHERE chatroom_id = ANY($1::bigint[]) "
                "AND role = 'assistant' AND status IN ('queued', 'generating')",
                rooms,
            )
        )


def _cpu(pids: list[int]) -> float:
    return sum(cpu_times(pids))


def _pg_cpu(pg: PgInstance, leave_out: int) -> float:
    return _cpu([p for p in pg.pids() if p != leave_out])


STATEMENTS = """SELECT left(regexp_replace(query, '\\s+', ' ', 'g'), 160) AS query, calls,
    round((total_exec_time / calls)::numeric, 3) AS ms_per_call,
    round(((shared_blks_hit + shared_blks_read)::float / calls)::numeric, 1) AS buffers_per_call,
    round((rows::float / calls)::numeric, 1) AS rows_per_call
FROM pg_stat_statements
WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND query NOT ILIKE '%pg_stat_statements%' AND query NOT ILIKE '%IN (''queued'', ''gener%'
ORDER BY total_exec_time DESC LIMIT 12"""


async def drain_once(
    pg: PgInstance, url: str, api: Api, user: User, worker: int, queued: int, spread: int
) -> dict[str, Any]:
    """K messages sent into a new room (`spread`: into new rooms of that many each) while the
    worker is stopped, then drained by it."""
    per_room = spread or queued
    rooms = [
        await api.create_room(user.token, f"backlog of {queued}")
        for _ in range(-(-queued // per_room))
    ]
    os.kill(worker, signal.SIGSTOP)
    try:
        await bounded(
            [
                lambda i=i: api.send(user.token, rooms[i // per_room], f"{SEND_BODY} ({i})")
                for i in range(queued)
            ],
            8,
        )
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker, signal.SIGCONT)
        raise
    async with Poller(url) as poll:
        assert poll.conn is not None
        await poll.conn.execute("SELECT pg_stat_statements_reset()")
        worker0, pg0, t0 = _cpu([worker]), _pg_cpu(pg, poll.pid), time.monotonic()
        os.kill(worker, signal.SIGCONT)
        # Often enough for a short drain, rarely enough not to load the machine in a long one.
        pause = 0.02 if queued < 1000 else 0.25
        while await poll.unfinished(rooms):  # noqa: ASYNC110 (the database is polled)
            await asyncio.sleep(pause)
        seconds = time.monotonic() - t0
        worker1, pg1 = _cpu([worker]), _pg_cpu(pg, poll.pid)
        statements = [dict(r) for r in await poll.conn.fetch(STATEMENTS)]
    return {
        "room": rooms[0],
        "seconds": seconds,
        "worker_cpu_s": worker1 - worker0,
        "pg_cpu_s": pg1 - pg0,
        "statements": statements,
    }


async def drains(
    pg: PgInstance, url: str, base_url: str, user: User, worker: int, args: argparse.Namespace
) -> dict[str, Any]:
    found: dict[str, Any] = {}
    async with Api(base_url, 16) as api:
        for queued in args.queued:
            rounds = args.small_rounds if queued < 1000 else 1
            runs = []
            for _ in range(rounds):
                runs.append(await drain_once(pg, url, api, user, worker, queued, args.spread))
            messages = queued * rounds
            worker_s = sum(r["worker_cpu_s"] for r in runs)
            pg_s = sum(r["pg_cpu_s"] for r in runs)
            seconds = sum(r["seconds"] for r in runs)
            found[str(queued)] = d = {
                "queued": queued,
                "rounds": rounds,
                "messages": messages,
                "worker_cpu_ms_per_message": round(worker_s * 1000 / messages, 3),
                "pg_cpu_ms_per_message": round(pg_s * 1000 / messages, 3),
                "replies_per_s": round(messages / seconds, 1) if seconds else None,
                "load_average": [round(x, 2) for x in os.getloadavg()],
                "statements_last_round": runs[-1]["statements"],
                "deep_room": runs[-1]["room"],
            }
            log(
                f"    K={queued:,} x {rounds}: worker {d['worker_cpu_ms_per_message']} ms/msg, "
                f"PostgreSQL {d['pg_cpu_ms_per_message']} ms/msg, {d['replies_per_s']} replies/s "
                f"(load {os.getloadavg()[0]:.2f})"
            )
    return found


# --- the plans ------------------------------------------------------------------------------
def _walk(node: dict[str, Any]) -> list[dict[str, Any]]:
    found = [node]
    for child in node.get("Plans", ()):
        found.extend(_walk(child))
    return found


def summarise(plan: dict[str, Any]) -> dict[str, Any]:
    top = plan["Plan"]
    nodes = _walk(top)
    buffers = sum(top.get(k, 0) for k in ("Shared Hit Blocks", "Shared Read Blocks"))
    # A CTE's or a subplan's buffers are in its own node; the top node sums its children.
    seq = sorted({n.get("Relation Name", "?") for n in nodes if n["Node Type"] == "Seq Scan"})
    indexes = sorted({n["Index Name"] for n in nodes if "Index Name" in n})
    triggers = plan.get("Triggers", ())
    return {
        "ms": round(plan.get("Execution Time", 0.0), 3),
        # The foreign keys' actions (a delete's cascades): their time is not in the nodes'.
        "trigger_ms": round(sum(t.get("Time", 0.0) for t in triggers), 3),
        "buffers": buffers,
        "seq_scans": seq,
        "indexes": indexes,
        "rows": top.get("Actual Rows"),
    }


def render(node: dict[str, Any], depth: int = 0) -> list[str]:
    """A plan as indented lines: node, relation/index, rows, loops, buffers, time."""
    what = node["Node Type"]
    if "Relation Name" in node:
        what += f" on {node['Relation Name']}"
    if "Index Name" in node:
        what += f" using {node['Index Name']}"
    if "CTE Name" in node:
        what += f" ({node['CTE Name']})"
    hit, read = node.get("Shared Hit Blocks", 0), node.get("Shared Read Blocks", 0)
    line = (
        f"{'  ' * depth}-> {what}  rows={node.get('Actual Rows')} loops={node.get('Actual Loops')}"
        f" buffers={hit}+{read} time={node.get('Actual Total Time')}"
    )
    for key in ("Index Cond", "Filter", "Rows Removed by Filter", "Recheck Cond"):
        if key in node:
            line += f" {key}: {node[key]}"
    lines = [line]
    for child in node.get("Plans", ()):
        lines.extend(render(child, depth + 1))
    return lines


def run_explain(url: str, src: str | None, scenarios: dict[str, Any]) -> dict[str, Any]:
    """`bench.scale_explain` in a subprocess, so that it imports the code measured (`src`)."""
    out = Path(tempfile.mkstemp(prefix="gb-scale-plans-", suffix=".json")[1])
    env = clean_env()
    if src:
        env["PYTHONPATH"] = f"{src}:{ROOT}"
    spec = json.dumps(scenarios)
    subprocess.run(
        [sys.executable, "-m", "bench.scale_explain", "--url", url, "--out", str(out)],
        input=spec,
        text=True,
        env=env,
        cwd=ROOT,
        check=True,
        timeout=600,
    )
    plans: dict[str, Any] = json.loads(out.read_text())
    out.unlink()
    return plans


# --- the run --------------------------------------------------------------------------------
def migrate(stack: Stack, src: str | None) -> str:
    """`gemini-backend migrate` by the tree `src` (None: this one); the revision reached."""
    env = stack.env(**({"PYTHONPATH": src} if src else {}))
    done = subprocess.run(
        [str(BIN / "gemini-backend"), "migrate"],
        env=env, cwd=stack.run.work, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"migrate failed:\n{done.stdout}\n{done.stderr}")
    rows = stack.query("SELECT version_num FROM alembic_version")
    return str(rows[0][0])


def measure_side(
    run: Run, pg: PgInstance, stack: Stack, filled: dict[str, Any], src: str | None
) -> dict[str, Any]:
    """One tree's processes on the filled database: the drains, then the plans."""
    args = run.args
    url = pg.url(stack.database)
    extra = {"PYTHONPATH": src} if src else {}
    api_proc, base_url = stack.api(**extra)
    stack.start_workers(1, **extra)
    worker = stack.workers[0]
    users = asyncio.run(setup_users(base_url, argparse.Namespace(rooms_per_user=1), 2, 0))
    # The worker's first replies import and warm up what a reply needs: not measured.
    asyncio.run(_warm(base_url, users[1]))
    stack.wait_replies_idle(120)
    found_drains = asyncio.run(drains(pg, url, base_url, users[0], worker.pid, args))
    small = asyncio.run(_one_exchange(base_url, users[0]))  # the room deleted under EXPLAIN
    stack.wait_replies_idle(120)
    stack.stop_workers()
    api_proc.stop()
    deep = found_drains[str(max(args.queued))]["deep_room"]
    filled_room = filled["rooms"] // 2 + 1
    scenarios = {
        "deep room": {"user_id": users[0].user_id, "room_id": deep, "delete_room_id": small},
        "filled room": {
            "user_id": asyncio.run(_room_owner(url, filled_room)),
            "room_id": filled_room,
        },
    }
    plans = run_explain(url, src, scenarios)
    for name, statements in plans.items():
        for statement in statements:
            s = statement["summary"]
            flag = f"  !! Seq Scan on {', '.join(s['seq_scans'])}" if s["seq_scans"] else ""
            log(
                f"    {name:12s} {statement['label']:28s} {s['ms']:9.3f} ms "
                f"{s['buffers']:7} buffers, triggers {s.get('trigger_ms', 0)} ms{flag}"
            )
    # The deep rooms go, so that the next side (and size) starts from the filled table; with
    # the foreign keys' triggers off (every row that references them is in them), since the
    # old code's cascade scanned the whole table per message (0016's ix_messages_reply_to).
    owner = f"(SELECT id FROM chatrooms WHERE user_id = {users[0].user_id:d})"
    asyncio.run(
        _execute(
            url,
            "SET session_replication_role = replica; "
            f"DELETE FROM messages WHERE chatroom_id IN {owner}; "
            f"DELETE FROM chatrooms WHERE user_id = {users[0].user_id:d}",
        )
    )
    return {"drains": found_drains, "plans": plans, "explained": scenarios}


def measure_size(run: Run, pg: PgInstance, rows: int) -> dict[str, Any]:
    args = run.args
    stack = Stack(run, "production")
    stack.prefix = f"scale:{stack.tag}"  # this branch's Redis keys
    stack.base_env["REDIS_KEY_PREFIX"] = stack.prefix
    stack.base_env["MAX_CHATROOMS_PER_USER"] = "1000000"  # --spread's rooms
    create_database(run, stack.database)
    prefix, redis_url = stack.prefix, stack.redis_url
    run.cleanup.add(f"redis keys {prefix}*", lambda: delete_redis_prefix(redis_url, prefix))
    sides = [("old", args.old_src)] if args.old_src else []
    sides.append((args.label, args.src))
    found: dict[str, Any] = {"sides": {}}
    url = pg.url(stack.database)
    log(f"N = {rows:,} messages: database {stack.database}")
    found["revision_filled"] = migrate(stack, sides[0][1])
    asyncio.run(_execute(url, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements"))
    found["fill"] = fill_result = asyncio.run(fill(url, rows, args.fill_sessions))
    log(f"  filled in {fill_result['total_s']} s: {fill_result}")
    for name, src in sides:
        at = time.monotonic()
        revision = migrate(stack, src)
        migrated = round(time.monotonic() - at, 1)
        log(f"  side {name} ({src or 'this tree'}): migration {revision} ({migrated} s)")
        side = measure_side(run, pg, stack, fill_result, src)
        side.update(revision=revision, migrate_s=migrated, src=src or "this tree")
        found["sides"][name] = side
    return found


async def _one_exchange(base_url: str, user: User) -> int:
    async with Api(base_url, 2) as api:
        room = await api.create_room(user.token, "one exchange")
        await api.send(user.token, room, "A room of one exchange.")
        return room


async def _warm(base_url: str, user: User) -> None:
    async with Api(base_url, 4) as api:
        room = await api.create_room(user.token, "warm-up")
        for i in range(20):
            await api.send(user.token, room, f"warm-up {i}")


async def _execute(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _room_owner(url: str, room: int) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT user_id FROM chatrooms WHERE id = $1", room))
    finally:
        await conn.close()


def growth(plans: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each statement's buffers and time at the largest N against the smallest, per side.
    `plans`: size -> side -> scenario -> statements."""
    sizes = sorted(plans, key=int)
    if len(sizes) < 2:
        return []
    rows = []
    for side, large in plans[sizes[-1]].items():
        small = plans[sizes[0]].get(side, {})
        for scenario, statements in large.items():
            before = {s["label"]: s["summary"] for s in small.get(scenario, [])}
            for statement in statements:
                s, b = statement["summary"], before.get(statement["label"])
                if b is None:
                    continue
                ratio = s["buffers"] / b["buffers"] if b["buffers"] else None
                rows.append(
                    {
                        "side": side,
                        "scenario": scenario,
                        "statement": statement["label"],
                        "buffers_small": b["buffers"],
                        "buffers_large": s["buffers"],
                        "buffers_ratio": round(ratio, 2) if ratio else None,
                        "ms_small": b["ms"],
                        "ms_large": s["ms"],
                        "grows": bool(ratio and ratio > 2 and s["buffers"] - b["buffers"] > 20),
                        "seq_scans": s["seq_scans"],
                    }
                )
    return rows


def table(results: dict[str, Any]) -> list[str]:
    """The CPU per message, as a Markdown table."""
    lines = [
        "| messages N | queued K | side | worker CPU ms/msg | PostgreSQL CPU ms/msg "
        "| replies/s | load (1 min) |",
        "| ---: | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for n, found in results.items():
        for side, figures in found["sides"].items():
            for k, d in figures["drains"].items():
                lines.append(
                    f"| {int(n):,} | {int(k):,} | {side} | {d['worker_cpu_ms_per_message']} "
                    f"| {d['pg_cpu_ms_per_message']} | {d['replies_per_s']} "
                    f"| {d['load_average'][0]} |"
                )
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    def ints(text: str) -> list[int]:
        return [int(x) for x in text.replace("_", "").split(",") if x]

    p = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__)
    p.add_argument("--rows", type=ints, default=[10_000, 10_000_000], help="table sizes N")
    p.add_argument("--queued", type=ints, default=[10, 10_000], help="backlogs K")
    p.add_argument(
        "--spread",
        type=int,
        default=0,
        help="a backlog in rooms of this many messages each (0: one room, as issue 22 measured)",
    )
    p.add_argument("--small-rounds", type=int, default=40, help="rounds of a backlog < 1,000")
    p.add_argument("--fill-sessions", type=int, default=2, help="sessions filling in parallel")
    p.add_argument("--src", default=None, help="a tree's src directory to run instead")
    p.add_argument(
        "--old-src",
        default=None,
        help="an older tree's src: measured first on the same filled database, which is then "
        "migrated by the tree measured (a before/after of a migration)",
    )
    p.add_argument("--label", default="new", help="the name of the side measured")
    p.add_argument(
        "--name", default=None, help="after scale-<date>- in the results' names (default: label)"
    )
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    p.add_argument("--output-dir", default=str(HERE / "results"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def interrupted(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    run = Run(args)
    started = dt.datetime.now(dt.UTC)
    results: dict[str, Any] = {}
    try:
        pg = PgInstance(run, PG_SETTINGS)
        pg.start()
        args.pg_url = pg.url()
        for rows in args.rows:
            results[str(rows)] = measure_size(run, pg, rows)
            run.cleanup.stop_all()
    except KeyboardInterrupt as exc:
        log(f"interrupted ({exc}); cleaning up")
        return 130
    finally:
        run.cleanup.run()
    plans = {
        n: {side: found.pop("plans") for side, found in r["sides"].items()}
        for n, r in results.items()
    }
    summary = {
        "started": started.isoformat(timespec="seconds"),
        "command": " ".join(["python -m bench.scale", *sys.argv[1:]]),
        "postgresql": "own instance (initdb + pg_ctl), "
        + ", ".join(f"{k}={v}" for k, v in PG_SETTINGS.items()),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "sizes": results,
        "plan_summaries": {
            n: {
                side: {s: [{"label": x["label"], **x["summary"]} for x in v] for s, v in p.items()}
                for side, p in by_side.items()
            }
            for n, by_side in plans.items()
        },
        "growth": growth(plans),
        "notes": run.results["notes"],
    }
    out_dir = Path(args.output_dir)
    name = args.label if args.name is None else args.name
    stem = f"scale-{started.date().isoformat()}" + (f"-{name}" if name else "")
    (out_dir / f"{stem}.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    (out_dir / f"{stem}-plans.json").write_text(json.dumps(plans, indent=1, default=str) + "\n")
    print("\n".join(table(results)))
    for row in summary["growth"]:
        flag = "  GROWS" if row["grows"] else ""
        log(
            f"  {row['side']:5s} {row['scenario']:12s} {row['statement']:28s} buffers "
            f"{row['buffers_small']} -> {row['buffers_large']}{flag}"
        )
    log(f"results: {out_dir / stem}.json and -plans.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
