"""Same-stack A/B of the reply pipeline: the old and the new code (API process and workers) on
one PostgreSQL database and one Redis of their own, in rounds old/new, new/old, ... at one time.

    .venv/bin/python -m bench.replies_ab --old <git-rev> [--new <rev-or-worktree>] [--rounds 6]

Each round starts the side's workers (`--workers`, default 2), then measures, on rooms created
for the round (so both sides' conversations are alike, not growing over the run):

- `--conversations` (50) conversations at once, each sending, reading its reply's stream to
  the end and sending again, `--messages` (500) in all: messages per second, time to first
  token, and the CPU each message cost every process: the side's API process and workers, the
  PostgreSQL backends of the run's database, the run's own `redis-server` and this client;
  with the round trips each message cost: PostgreSQL transactions (`pg_stat_database`, each
  autocommit statement is one) and Redis commands (`INFO commandstats`; a pipeline is one round
  trip of several commands);
- `--sends` (1000) sends from 64 senders at once, replies per second from the first send to
  the last reply completed.

A Redis server of its own (a free port, no persistence) so that its CPU and its command counts
are this run's alone; PostgreSQL is the machine's (its auxiliary processes, shared with anything
else on it, are not counted). Writes bench/results/replies-ab-<date>-<label>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import redis

from bench import lean
from bench.ab import (
    AB,
    Side,
    check_import,
    choose_python,
    log,
    prepare_database,
    resolve_side,
    start_api,
)
from bench.api import User
from bench.load import percentile
from bench.procs import cpu_times, free_port, machine_busy
from bench.run import _end_to_end, setup_users

HERE = Path(__file__).resolve().parent


class Run(AB):
    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.results = {"rounds": [], "notes": [], "problems": {}}


def start_redis(run: Run) -> str:
    port = free_port()
    proc = run.proc(
        "redis",
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        os.environ.copy(),
    )
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise SystemExit(f"redis-server did not start:\n{proc.tail()}") from None
            time.sleep(0.1)
    client.close()
    run.redis_pid = proc.pid
    return f"redis://127.0.0.1:{port}/0"


def readers(run: Run) -> int:
    """Connections waiting in (or last sending) XREADGROUP: a worker reading jobs. (Redis 7.0
    adds a consumer to the group only when a read returns a job.)"""
    client = redis.Redis.from_url(run.redis_url)
    try:
        return sum(1 for c in client.client_list() if c.get("cmd") == "xreadgroup")
    finally:
        client.close()


def start_workers(run: Run, side: Side, count: int) -> list[Any]:
    before = readers(run)
    procs = [
        run.proc(f"{side.role}-worker-{n}", side.argv("worker"), run.env(side))
        for n in range(count)
    ]
    # Ready once each reads jobs (its imports take seconds on a loaded machine).
    deadline = time.monotonic() + 120
    while readers(run) < before + count:
        for p in procs:
            if not p.alive():
                raise SystemExit(f"{p.name} exited:\n{p.tail()}")
        if time.monotonic() > deadline:
            raise SystemExit("the workers did not start within 120 s")
        time.sleep(0.2)
    return procs


async def pg_counts(run: Run) -> tuple[int, list[int]]:
    """The run database's committed transactions so far, and its backends' pids."""
    conn = await asyncpg.connect(run.args.pg_url)
    try:
        xacts = await conn.fetchval(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = $1",
            run.database,
        )
        pids = [
            r[0]
            for r in await conn.fetch(
                "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                run.database,
            )
        ]
        return int(xacts), pids
    finally:
        await conn.close()


def redis_calls(url: str) -> dict[str, int]:
    """Commands so far, by command, and the server's socket reads (`reads`: about one per
    round trip, a pipeline's commands arriving in one read)."""
    client = redis.Redis.from_url(url)
    try:
        stats = client.info("commandstats")
        calls = {k[8:]: int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info"}
        calls["reads"] = int(client.info("stats")["total_reads_processed"])
        return calls
    finally:
        client.close()


class Meter:
    """CPU seconds of each part and round trips between start and stop."""

    def __init__(self, run: Run, side: Side, workers: list[Any]) -> None:
        self.run, self.side, self.workers = run, side, workers
        # Stats of pg_stat_database are flushed by each backend at most every second or so.
        self.xacts0, pg_pids = asyncio.run(pg_counts(run))
        self.pg0 = {pid: sum(cpu_times([pid])) for pid in pg_pids}
        self.redis_calls0 = redis_calls(run.redis_url)
        self.cpu0 = self._cpu()

    def _cpu(self) -> dict[str, float]:
        return {
            "api": sum(cpu_times(self.side.pids())),
            "workers": sum(cpu_times([w.pid for w in self.workers])),
            "redis": sum(cpu_times([self.run.redis_pid])),
            "client": sum(cpu_times([os.getpid()])),
        }

    def stop(self) -> dict[str, float]:
        cpu = self._cpu()
        time.sleep(1.5)  # let the backends report their transactions
        xacts, pg_pids = asyncio.run(pg_counts(self.run))
        pg = sum(sum(cpu_times([pid])) - self.pg0.get(pid, 0.0) for pid in pg_pids)
        spent = {k: cpu[k] - self.cpu0[k] for k in cpu}
        spent["postgres"] = pg
        spent["pg_xacts"] = xacts - self.xacts0
        calls = redis_calls(self.run.redis_url)
        moved = {k: v - self.redis_calls0.get(k, 0) for k, v in calls.items()}
        spent["redis_reads"] = moved.pop("reads")
        spent["redis_commands"] = sum(moved.values())
        self.redis_by_command = {k: v for k, v in sorted(moved.items()) if v}
        return spent


async def conversations(base_url: str, users: list[User], rooms: dict[int, int], total: int):
    rounds = max(1, total // len(users))

    async def one(user: User) -> list[Any]:
        conn = lean.Connection.to(base_url)
        try:
            return [
                await lean.converse(conn, user.token, rooms[user.user_id], f"ab {i}")
                for i in range(rounds)
            ]
        finally:
            await conn.close()

    began = time.perf_counter()
    done = await asyncio.gather(*(one(u) for u in users))
    return [x for group in done for x in group], time.perf_counter() - began


async def fresh_rooms(base_url: str, users: list[User], label: str) -> dict[int, int]:
    from bench.api import Api, bounded

    rooms: dict[int, int] = {}
    async with Api(base_url, 32) as api:

        async def one(user: User) -> None:
            rooms[user.user_id] = await api.create_room(user.token, label)

        await bounded([lambda u=u: one(u) for u in users], 32)
    return rooms


def wait_idle(run: Run, timeout: float = 120) -> None:
    async def active() -> int:
        conn = await asyncpg.connect(run.args.pg_url.rsplit("/", 1)[0] + f"/{run.database}")
        try:
            return int(
                await conn.fetchval(
                    "SELECT count(*) FROM messages WHERE role = 'assistant' "
                    "AND status IN ('queued', 'generating')"
                )
            )
        finally:
            await conn.close()

    deadline = time.monotonic() + timeout
    while asyncio.run(active()) and time.monotonic() < deadline:
        time.sleep(0.3)


def wait_quiet(seconds: float, below: float) -> float:
    """Up to `seconds` for the machine's CPUs to be busy less than `below` (a lull between the
    other users' bursts); the last busy fraction seen."""
    deadline = time.monotonic() + seconds
    busy = machine_busy(1.0)
    while busy >= below and time.monotonic() < deadline:
        busy = machine_busy(1.0)
    return round(busy, 2)


def one_round(run: Run, side: Side, users: list[User], number: int) -> dict[str, Any]:
    args = run.args
    busy = wait_quiet(args.wait_quiet, args.quiet_below)
    workers = start_workers(run, side, args.workers)
    load = os.getloadavg()[0]
    try:
        conv_users = users[: args.conversations]
        rooms = asyncio.run(fresh_rooms(side.base_url, users, f"round {number}"))
        meter = Meter(run, side, workers)
        results, elapsed = asyncio.run(
            conversations(side.base_url, conv_users, rooms, args.messages)
        )
        spent = meter.stop()
        ok = [r for r in results if r.ok]
        per = {k: round(v * 1000 / max(1, len(ok)), 3) for k, v in spent.items()}
        per["pg_xacts"] = round(spent["pg_xacts"] / max(1, len(ok)), 2)
        per["redis_commands"] = round(spent["redis_commands"] / max(1, len(ok)), 2)
        per["redis_reads"] = round(spent["redis_reads"] / max(1, len(ok)), 2)
        machine = sum(per[k] for k in ("api", "workers", "postgres", "redis", "client"))
        ttft = [r.ttft_ms for r in ok]
        entry: dict[str, Any] = {
            "side": side.role,
            "load_1min": round(load, 2),
            "busy_before": busy,
            "messages": len(ok),
            "failed": len(results) - len(ok),
            "messages_per_s": round(len(ok) / elapsed, 1),
            "ttft_p50_ms": round(percentile(ttft, 50), 2),
            "ttft_p95_ms": round(percentile(ttft, 95), 2),
            "cpu_ms_per_message": per,
            "machine_cpu_ms_per_message": round(machine, 3),
            "redis_commands_per_message": {
                k: round(v / max(1, len(ok)), 2) for k, v in meter.redis_by_command.items()
            },
        }
        wait_idle(run)
        # End to end: many sends at once; replies per second, first send to last reply.
        for user in users:
            user.rooms.append(rooms[user.user_id])
        sent = asyncio.run(_end_to_end(side.base_url, users, args.sends))
        wait_idle(run)
        entry["end_to_end"] = asyncio.run(end_to_end_rate(run, sent["reply_ids"]))
        entry["end_to_end"]["send_seconds"] = round(sent["send_seconds"], 2)
        entry["load_1min_end"] = round(os.getloadavg()[0], 2)
    finally:
        for w in workers:
            w.stop()
    log(f"round {number} {side.name}: {json.dumps(entry)}")
    return entry


async def end_to_end_rate(run: Run, ids: list[int]) -> dict[str, Any]:
    conn = await asyncpg.connect(run.args.pg_url.rsplit("/", 1)[0] + f"/{run.database}")
    try:
        done, first, last = await conn.fetchrow(
            "SELECT count(*) FILTER (WHERE status = 'completed'), min(created_at), "
            "max(completed_at) FROM messages WHERE id = ANY($1::bigint[])",
            ids,
        )
    finally:
        await conn.close()
    span = (last - first).total_seconds() if first and last else 0
    return {"completed": done, "seconds": round(span, 2), "replies_per_s": round(done / span, 1)}


def summary(run: Run) -> list[str]:
    rounds = run.results["rounds"]
    keys = [
        ("machine CPU ms/message", lambda r: r["machine_cpu_ms_per_message"]),
        ("API CPU ms/message", lambda r: r["cpu_ms_per_message"]["api"]),
        ("workers CPU ms/message", lambda r: r["cpu_ms_per_message"]["workers"]),
        ("PostgreSQL CPU ms/message", lambda r: r["cpu_ms_per_message"]["postgres"]),
        ("Redis CPU ms/message", lambda r: r["cpu_ms_per_message"]["redis"]),
        ("client CPU ms/message", lambda r: r["cpu_ms_per_message"]["client"]),
        ("PostgreSQL transactions/message", lambda r: r["cpu_ms_per_message"]["pg_xacts"]),
        ("Redis commands/message", lambda r: r["cpu_ms_per_message"]["redis_commands"]),
        ("Redis socket reads/message", lambda r: r["cpu_ms_per_message"]["redis_reads"]),
        ("messages/s at 50 conversations", lambda r: r["messages_per_s"]),
        ("TTFT p95 ms", lambda r: r["ttft_p95_ms"]),
        ("replies/s end to end", lambda r: r["end_to_end"]["replies_per_s"]),
    ]
    lines = ["| figure | old median (min-max) | new median (min-max) | new vs old |"]
    lines.append("| --- | ---: | ---: | ---: |")
    for name, get in keys:
        cells = []
        medians = []
        for role in ("old", "new"):
            values = [get(r) for r in rounds if r["side"] == role]
            med = statistics.median(values)
            medians.append(med)
            cells.append(f"{med:,.3g} ({min(values):,.3g}-{max(values):,.3g})")
        change = (medians[1] / medians[0] - 1) * 100 if medians[0] else float("nan")
        lines.append(f"| {name} | {cells[0]} | {cells[1]} | {change:+.1f}% |")
    loads = [r["load_1min"] for r in rounds]
    lines.append("")
    lines.append(f"load average (1 min) at the rounds' starts: {min(loads)}-{max(loads)}")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.replies_ab", description=__doc__)
    p.add_argument("--old", required=True)
    p.add_argument("--new", default=str(HERE.parent))
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--conversations", type=int, default=50)
    p.add_argument("--messages", type=int, default=500)
    p.add_argument("--sends", type=int, default=1000)
    p.add_argument("--users", type=int, default=64)
    p.add_argument("--wait-quiet", type=float, default=20.0)
    p.add_argument("--quiet-below", type=float, default=0.25)
    p.add_argument("--venv", default="shared")
    p.add_argument("--label", default="replies")
    p.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--output-dir", default=str(HERE / "results"))
    args = p.parse_args(argv)
    args.redis_url = "redis://127.0.0.1:1/0"  # replaced by the run's own server below
    args.seed_sends = 0

    def interrupted(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    run = Run(args)
    started = dt.datetime.now(dt.UTC)
    try:
        run.redis_url = start_redis(run)
        args.redis_url = run.redis_url
        run.base_env["REDIS_URL"] = run.redis_url
        run.old = resolve_side(run, "old", args.old)
        run.new = resolve_side(run, "new", args.new)
        for side, other in ((run.old, run.new), (run.new, run.old)):
            log(f"{side.name}: {side.subject} ({side.tree})")
            choose_python(run, side, other)
            check_import(run, side)
        prepare_database(run)
        for side in (run.old, run.new):
            side.proc, side.base_url = start_api(run, side, "api")
        users = asyncio.run(
            setup_users(run.new.base_url, argparse.Namespace(rooms_per_user=1), args.users, 0)
        )
        order = [run.old, run.new, run.new, run.old]
        for n in range(args.rounds):
            side = order[n % 4]
            run.results["rounds"].append(one_round(run, side, users, n + 1))
    except KeyboardInterrupt as exc:
        log(f"interrupted ({exc}); cleaning up")
        return 130
    finally:
        run.cleanup.stop_all()
        run.collect_problems()
        run.cleanup.run()
    run.results.update(
        kind="reply pipeline A/B",
        started=started.isoformat(timespec="seconds"),
        command=" ".join(["python -m bench.replies_ab", *sys.argv[1:]]),
        old=run.old.describe(),
        new=run.new.describe(),
        settings={k: v for k, v in vars(args).items() if k not in {"pg_url", "redis_url"}},
        table=summary(run),
    )
    out = Path(args.output_dir) / f"replies-ab-{started.date().isoformat()}-{args.label}.json"
    out.write_text(json.dumps(run.results, indent=2, default=str) + "\n")
    print("\n".join(run.results["table"]))
    if run.results["problems"]:
        print(f"problems in the processes' logs: {json.dumps(run.results['problems'])}")
    log(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
