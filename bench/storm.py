"""A send storm and the bloat it leaves: `python -m bench.storm [--seconds 300] [--src DIR]`.

One production stack (PostgreSQL + Redis, a fresh database migrated by the code measured), one
API process and two workers; 32 users each sending into a room of their own at 32 connections
(wrk) for --seconds, the replies generated meanwhile (the demo model at no delay). The
database's table statistics are reset just before the storm; once every reply has finished,
`pg_stat_user_tables` of the tables a send or a reply updates: updates, of them HOT (in place,
no new index entries), live and dead rows, and the table's size. `--src` runs another tree's
`src` (e.g. a `git worktree` of an older revision) for a before/after at the same time.

PostgreSQL is a throwaway instance of its own (bench.scale's), with autovacuum on as in
production: the machine's shared instance has it off (CI), and dead rows only mean something
with the vacuum that would clear them running (`--shared-postgres` uses --pg-url instead).

Prints a table and writes bench/results/storm-<date>-<label>.json. Everything it creates is
removed at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from bench.load import LoadGenerator, Req, ensure_wrk
from bench.run import Run, Stack, log, setup_users
from bench.scale import PgInstance

HERE = Path(__file__).resolve().parent
TABLES = ("chatrooms", "daily_usage", "messages")
# PostgreSQL's defaults (autovacuum on, a minute's nap) on Debian's shared_buffers.
PG_SETTINGS = {
    "shared_buffers": "128MB",
    "max_connections": "200",
    "autovacuum": "on",
    "listen_addresses": "127.0.0.1",
}
SEND_BODY = json.dumps({"content": "Storm message: answer in one line."})

STATS = """SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_live_tup, n_dead_tup,
    autovacuum_count, pg_relation_size(relid), pg_indexes_size(relid),
    (SELECT reloptions FROM pg_class WHERE oid = relid)
FROM pg_stat_user_tables WHERE relname = ANY($1::text[]) ORDER BY relname"""


def table_stats(stack: Stack) -> dict[str, dict[str, Any]]:
    found = {}
    for row in stack.query(STATS, list(TABLES)):
        name, ins, upd, hot, live, dead, autovacuums, size, index_size, options = row
        found[name] = {
            "inserted": ins,
            "updated": upd,
            "hot_updated": hot,
            "hot_share": round(hot / upd, 3) if upd else None,
            "live_rows": live,
            "dead_rows": dead,
            "autovacuums": autovacuums,
            "table_kb": size // 1024,
            "indexes_kb": index_size // 1024,
            "options": options,
        }
    return found


def storm(run: Run, src: str | None) -> dict[str, Any]:
    args = run.args
    if not args.shared_postgres:
        instance = PgInstance(run, PG_SETTINGS)
        instance.start()
        args.pg_url = instance.url()
    extra = {"PYTHONPATH": src} if src else {}
    stack = Stack(run, "production")
    stack.base_env.update(extra)
    stack.create()
    _, base_url = stack.api()
    stack.start_workers(2)
    users = asyncio.run(setup_users(base_url, argparse.Namespace(rooms_per_user=1), 32, 0))
    reqs = [Req("POST", f"/chatroom/{u.rooms[0]}/message", u.token, SEND_BODY) for u in users]
    stack.query("SELECT pg_stat_reset()")
    assert run.loadgen is not None
    log(f"storm: {args.seconds:.0f} s of sends at {args.connections} connections")
    result = run.loadgen.run(base_url, reqs, connections=args.connections, seconds=args.seconds)
    log(f"  {result.requests} sends, {result.req_per_s:.1f}/s, {result.non_2xx} non-2xx")
    if not stack.wait_replies_idle(args.drain_timeout):
        run.note("not every reply finished before the table statistics were read")
    time.sleep(1.5)  # backends report their table statistics within a second of going idle
    stats = table_stats(stack)
    for name, figures in stats.items():
        log(f"  {name}: {figures}")
    return {
        "sends": result.requests,
        "sends_per_s": round(result.req_per_s, 1),
        "non_2xx": result.non_2xx,
        "p99_ms": round(result.p99_ms, 2),
        "tables": stats,
    }


def table(found: dict[str, Any]) -> list[str]:
    lines = [
        "| table | updates | HOT | HOT share | live rows | dead rows | table KB | indexes KB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, t in found["tables"].items():
        share = "-" if t["hot_share"] is None else f"{t['hot_share']:.1%}"
        lines.append(
            f"| {name} | {t['updated']:,} | {t['hot_updated']:,} | {share} | {t['live_rows']:,} "
            f"| {t['dead_rows']:,} | {t['table_kb']:,} | {t['indexes_kb']:,} |"
        )
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.storm", description=__doc__)
    p.add_argument("--seconds", type=float, default=300.0, help="length of the storm")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--src", default=None, help="a tree's src directory to run instead")
    p.add_argument("--label", default="storm")
    p.add_argument("--drain-timeout", type=float, default=300.0)
    p.add_argument("--shared-postgres", action="store_true", help="use --pg-url's server")
    p.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    p.add_argument("--output-dir", default=str(HERE / "results"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def interrupted(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    run = Run(args)
    started = dt.datetime.now(dt.UTC)
    try:
        run.loadgen = LoadGenerator(ensure_wrk(log), threads=min(2, os.cpu_count() or 1))
        found = storm(run, args.src)
    except KeyboardInterrupt as exc:
        log(f"interrupted ({exc}); cleaning up")
        return 130
    finally:
        run.cleanup.stop_all()
        run.cleanup.run()
    found.update(
        started=started.isoformat(timespec="seconds"),
        command=" ".join(["python -m bench.storm", *sys.argv[1:]]),
        src=args.src or "this tree",
        postgres="shared (--pg-url)" if args.shared_postgres else f"own instance {PG_SETTINGS}",
        load_average_at_end=[round(x, 2) for x in os.getloadavg()],
        notes=run.results["notes"],
    )
    out = Path(args.output_dir) / f"storm-{started.date().isoformat()}-{args.label}.json"
    out.write_text(json.dumps(found, indent=2, default=str) + "\n")
    print("\n".join(table(found)))
    log(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
