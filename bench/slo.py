"""Time to first token as an open-loop SLO: `python -m bench.slo [--rates 5,10,20,...]`, and the
`slo` phase of `make bench`.

Messages arrive on a Poisson schedule at a fixed rate, whatever the replies are doing (open
loop: a slow reply does not delay the next arrival, so the latency of a saturated system is not
hidden by the client waiting for it; "coordinated omission"). Each message goes to the next
free conversation (user, room) of a pool: POST, then its stream opened from the receipt's
`stream_url` and read to its `done`. TTFT is measured from the message's *scheduled* send time
to its first `delta` event, so time the client spent late, waiting for a connection or in the
API's accept queue counts too.

The rate is stepped up (doubling, then bisecting between the highest rate that met the SLO and
the lowest that missed it) and each step reports TTFT p50/p95/p99, where the time went (client
lag, the send, the stream's opening, the wait for the first delta), the CPU of every process
per message and as a share of one core (a single-threaded process at 100% is saturated), and
the 1-minute load average. The capacity is the highest rate whose p95 stayed under the SLO with
no failed message. A message whose stream has not ended --timeout seconds after it started
counts as failed and as an infinite TTFT in the percentiles.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import os
import random
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import lean
from bench.api import User
from bench.load import percentile
from bench.procs import Proc, cpu_times, pids_named

HERE = Path(__file__).resolve().parent
SLO_MS = 50.0
DEFAULT_RATES = [2, 5, 10, 20, 40, 80, 160, 320]
# The demo model's own default (config.py): four or five chunks, 30 ms apart.
CHUNK_DELAY_MS = "30"


@dataclass
class Sample:
    scheduled: float
    started: float = 0.0
    accepted: float = 0.0  # 202 received
    opened: float = 0.0  # stream's 200 head received
    first: float = 0.0  # first `delta` event received
    done: float = 0.0
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and self.first > 0


class Pool:
    """Idle keep-alive connections; a message takes one or opens a new one (never waits)."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.idle: list[lean.Connection] = []
        self.opened = 0

    def take(self) -> lean.Connection:
        if self.idle:
            return self.idle.pop()
        self.opened += 1
        return lean.Connection.to(self.base_url)

    def give(self, conn: lean.Connection) -> None:
        self.idle.append(conn)

    async def close(self) -> None:
        for conn in self.idle:
            await conn.close()
        self.idle.clear()


async def one_message(pool: Pool, token: str, room: int, sample: Sample) -> None:
    conn = pool.take()
    auth = {"Authorization": f"Bearer {token}"}
    sample.started = time.perf_counter()
    try:
        status, receipt = await conn.json(
            "POST", f"/chatroom/{room}/message", auth, {"content": "open loop: one line, please"}
        )
        sample.accepted = time.perf_counter()
        if status != 202:
            sample.error = f"send {status}"
            pool.give(conn)
            return
        status, _headers, body = await conn.request(
            "GET", receipt["stream_url"], {**auth, "Accept": "text/event-stream"}
        )
        sample.opened = time.perf_counter()
        if status != 200:
            async for _ in body:
                pass
            sample.error = f"stream {status}"
            pool.give(conn)
            return
        pending = b""
        event = ""
        async for piece in body:  # to the end: the connection is then used again
            if sample.done:
                continue
            pending += piece
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if line.startswith(b"event:"):
                    event = line[6:].strip().decode()
                    if event == "delta" and not sample.first:
                        sample.first = time.perf_counter()
                    elif event in {"done", "error"} and not sample.done:
                        sample.done = time.perf_counter()
        if event == "error" or not sample.done:
            sample.error = f"stream ended with {event or 'nothing'}"
        pool.give(conn)
    except (lean.HttpError, OSError, asyncio.IncompleteReadError, ValueError, KeyError) as exc:
        sample.error = type(exc).__name__
        await conn.close()
    except asyncio.CancelledError:  # the message's timeout: its socket is not used again
        await asyncio.shield(conn.close())
        raise


async def open_loop(
    base_url: str,
    conversations: list[tuple[str, int]],
    rate: float,
    seconds: float,
    *,
    seed: int,
    message_timeout: float,
) -> tuple[list[Sample], dict[str, Any]]:
    """Poisson arrivals at `rate` per second for `seconds`; every message's timings."""
    rng = random.Random(seed)
    pool = Pool(base_url)
    busy: set[int] = set()  # conversations whose message is still in flight
    samples: list[Sample] = []
    tasks: set[asyncio.Task[None]] = set()
    skipped = 0
    cursor = 0

    async def run(index: int, sample: Sample) -> None:
        token, room = conversations[index]
        try:
            await asyncio.wait_for(one_message(pool, token, room, sample), message_timeout)
        except TimeoutError:
            sample.error = sample.error or "timeout"
        finally:
            busy.discard(index)

    began = time.perf_counter()
    at = began
    end = began + seconds
    while True:
        at += rng.expovariate(rate)
        if at >= end:
            break
        delay = at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        # The next conversation with nothing in flight (a room takes one reply at a time).
        for _ in range(len(conversations)):
            cursor = (cursor + 1) % len(conversations)
            if cursor not in busy:
                break
        else:
            skipped += 1
            samples.append(Sample(at, error="no free conversation"))
            continue
        busy.add(cursor)
        sample = Sample(at)
        samples.append(sample)
        task = asyncio.create_task(run(cursor, sample))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    scheduled_for = time.perf_counter() - began
    if tasks:
        await asyncio.gather(*list(tasks), return_exceptions=True)
    await pool.close()
    return samples, {
        "schedule_seconds": round(scheduled_for, 2),
        "connections_opened": pool.opened,
        "no_free_conversation": skipped,
    }


def _ms(values: list[float], q: float) -> float | None:
    return round(percentile(values, q), 2) if values else None


def summarise(samples: list[Sample]) -> dict[str, Any]:
    ok = [s for s in samples if s.ok]
    failed = [s for s in samples if not s.ok]
    reasons: dict[str, int] = {}
    for s in failed:
        reasons[s.error or "no delta"] = reasons.get(s.error or "no delta", 0) + 1
    # A message without its first token counts as later than any that got one.
    ttft = [(s.first - s.scheduled) * 1000 for s in ok] + [math.inf] * len(failed)

    def q(values: list[float], p: float) -> float | None:
        if not values:
            return None
        v = percentile(values, p)
        return None if math.isinf(v) or math.isnan(v) else round(v, 2)

    parts = {
        "lag": [(s.started - s.scheduled) * 1000 for s in ok],
        "send": [(s.accepted - s.started) * 1000 for s in ok],
        "open": [(s.opened - s.accepted) * 1000 for s in ok],
        "first": [(s.first - s.opened) * 1000 for s in ok],
        "done": [(s.done - s.first) * 1000 for s in ok],
    }
    return {
        "messages": len(samples),
        "ok": len(ok),
        "failed": len(failed),
        "failure_reasons": reasons,
        "p50": q(ttft, 50),
        "p95": q(ttft, 95),
        "p99": q(ttft, 99),
        "max": q(ttft, 100),
        # Where a message's time to first token went: client lag (late start), the send (to the
        # 202), the stream's opening (to its 200 head), the wait for the first delta.
        "parts_p50_ms": {k: _ms(v, 50) for k, v in parts.items()},
        "parts_p95_ms": {k: _ms(v, 95) for k, v in parts.items()},
    }


class ProcessCpu:
    """CPU seconds of every process of each part between `__init__` and `stop()`, per process
    (a single-threaded process near one core is the first thing to saturate)."""

    def __init__(
        self,
        api: list[Proc],
        workers: list[Proc],
        postgres: Callable[[], list[int]] | None = None,
    ) -> None:
        def api_pids() -> list[int]:
            found = []
            for proc in api:
                found += proc.children() or [proc.pid]
            return found

        self.groups: dict[str, Callable[[], list[int]]] = {
            "api": api_pids,
            "workers": lambda: [w.pid for w in workers],
            "postgres": postgres or (lambda: pids_named("postgres")),
            "redis": lambda: pids_named("redis-server"),
            "client": lambda: [os.getpid()],
        }
        self.began = time.perf_counter()
        self.start = self._now()
        self.start_waits = self._waits()
        self.machine_start = _machine()

    def _now(self) -> dict[str, dict[int, float]]:
        return {g: {p: sum(cpu_times([p])) for p in pids()} for g, pids in self.groups.items()}

    def _waits(self) -> dict[str, dict[int, float]]:
        return {g: {p: run_queue_wait(p) for p in pids()} for g, pids in self.groups.items()}

    def stop(self, messages: int) -> dict[str, Any]:
        wall = time.perf_counter() - self.began
        end = self._now()
        end_waits = self._waits()
        total_a, idle_a = self.machine_start
        total_b, idle_b = _machine()
        out: dict[str, Any] = {"wall_seconds": round(wall, 2)}
        per_message: dict[str, float | None] = {}
        cores: dict[str, float] = {}
        busiest: dict[str, float] = {}
        for group, pids in end.items():
            spent = {p: v - self.start[group].get(p, 0.0) for p, v in pids.items()}
            seconds = sum(spent.values())
            per_message[group] = round(seconds * 1000 / messages, 3) if messages else None
            cores[group] = round(seconds / wall, 3)
            busiest[group] = round(max(spent.values(), default=0.0) / wall, 3)
        # Time the part's threads were ready to run but waited for a CPU (schedstat): on a
        # machine shared with other work, most of a message's latency at low rates.
        waited: dict[str, float | None] = {}
        for group, pids in end_waits.items():
            seconds = sum(v - self.start_waits[group].get(p, 0.0) for p, v in pids.items())
            waited[group] = round(seconds * 1000 / messages, 3) if messages else None
        out["run_queue_wait_ms_per_message"] = waited
        out["cpu_ms_per_message"] = per_message
        out["cores_used"] = cores  # CPU seconds per second of the whole part
        out["busiest_process_cores"] = busiest  # the part's busiest single process
        spent_all = total_b - total_a
        out["machine_busy"] = round(1 - (idle_b - idle_a) / spent_all, 3) if spent_all else None
        return out


def run_queue_wait(pid: int) -> float:
    """Seconds the threads of a process have waited on a run queue (/proc/<pid>/task/*/schedstat:
    time on a CPU, time waiting for one, timeslices)."""
    total = 0
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return 0.0
    for task in tasks:
        try:
            total += int((task / "schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total / 1e9


def _machine() -> tuple[int, int]:
    values = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(values[:8]), values[3] + values[4]


async def touch_users(base_url: str, users: list[User], rounds: int) -> None:
    """GET /user/me for every user `rounds` times, each time on a new connection."""

    async def one(user: User) -> None:
        for _ in range(rounds):
            conn = lean.Connection.to(base_url)
            try:
                _status, _headers, body = await conn.request(
                    "GET", "/user/me", {"Authorization": f"Bearer {user.token}"}
                )
                async for _ in body:
                    pass
            finally:
                await conn.close()

    semaphore = asyncio.Semaphore(16)

    async def bounded(user: User) -> None:
        async with semaphore:
            await one(user)

    await asyncio.gather(*(bounded(u) for u in users))


def conversations_of(users: list[User]) -> list[tuple[str, int]]:
    """Every (token, room) of the users, interleaved so consecutive messages are other users'."""
    most = max(len(u.rooms) for u in users)
    return [(u.token, u.rooms[r]) for r in range(most) for u in users if r < len(u.rooms)]


def step(
    base_url: str,
    conversations: list[tuple[str, int]],
    rate: float,
    args: argparse.Namespace,
    api: list[Proc],
    workers: list[Proc],
    seed: int,
    postgres: Callable[[], list[int]] | None = None,
) -> dict[str, Any]:
    seconds = max(args.step_seconds, args.min_messages / rate)
    load_before = os.getloadavg()[0]
    cpu = ProcessCpu(api, workers, postgres)
    samples, extra = asyncio.run(
        open_loop(base_url, conversations, rate, seconds, seed=seed, message_timeout=args.timeout)
    )
    entry: dict[str, Any] = {"rate": rate, "seconds": round(seconds, 1)}
    entry.update(summarise(samples))
    entry["achieved_rate"] = round(len(samples) / seconds, 1)
    entry.update(extra)
    entry.update(cpu.stop(entry["ok"]))
    entry["load_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    p95 = entry["p95"]
    entry["met"] = p95 is not None and p95 < args.slo_ms and not entry["failed"]
    return entry


def describe(entry: dict[str, Any]) -> str:
    parts = entry["parts_p95_ms"]
    return (
        f"rate {entry['rate']:g}/s: TTFT p50 {entry['p50']} p95 {entry['p95']} p99 {entry['p99']}"
        f" ms, {entry['ok']} ok {entry['failed']} failed {entry['failure_reasons'] or ''}; p95 "
        f"parts lag {parts['lag']} send {parts['send']} open {parts['open']} first "
        f"{parts['first']}; cores {entry['cores_used']}; waited for a CPU ms/msg "
        f"{entry['run_queue_wait_ms_per_message']}; busiest "
        f"{entry['busiest_process_cores']}; load {entry['load_1min']}"
        f" -> {'met' if entry['met'] else 'MISSED'}"
    )


def saturation(entry: dict[str, Any]) -> str:
    """Which part was nearest its ceiling at a step: a process near one core, or the machine."""
    busiest = entry["busiest_process_cores"]
    top = max(("api", "workers", "postgres", "redis", "client"), key=lambda g: busiest[g])
    return (
        f"busiest single process: {top} at {busiest[top]:.0%} of a core; machine "
        f"{(entry['machine_busy'] or 0):.0%} busy"
    )


def search_capacity(
    log: Any,
    base_url: str,
    users: list[User],
    args: argparse.Namespace,
    api: list[Proc],
    workers: list[Proc],
    wait_idle: Callable[[], bool],
    postgres: Callable[[], list[int]] | None = None,
) -> dict[str, Any]:
    """Step the rate up until the SLO is missed twice, then bisect; the SLO capacity."""
    conversations = conversations_of(users)
    log(
        f"open-loop TTFT SLO (p95 < {args.slo_ms:g} ms): {len(conversations)} conversations, "
        f"rates {args.rates}, {args.step_seconds:g} s a step (at least {args.min_messages} "
        "messages)"
    )
    # A warm-up, not recorded: every user signed in on every API process (the principal
    # cache; a new connection may land on any of them), then a few seconds of messages.
    asyncio.run(touch_users(base_url, users, rounds=2 * args.api_procs))
    warm = argparse.Namespace(**{**vars(args), "step_seconds": 3.0, "min_messages": 0})
    step(base_url, conversations, float(args.rates[0]), warm, api, workers, 0, postgres)
    wait_idle()
    # What the processes spend with no messages at all (pings, heartbeats, polls): part of
    # every step's CPU per message, large at the low rates.
    idle = ProcessCpu(api, workers, postgres)
    time.sleep(args.idle_seconds)
    idle_cores = idle.stop(0)["cores_used"]
    log(f"  idle, no messages: cores {idle_cores}")
    steps: list[dict[str, Any]] = []
    misses = 0

    def measure(rate: float) -> dict[str, Any]:
        entry = step(base_url, conversations, rate, args, api, workers, len(steps) + 1, postgres)
        entry["saturation"] = saturation(entry)
        steps.append(entry)
        log("  " + describe(entry))
        if not wait_idle():
            entry["note"] = "replies still unfinished after the step"
        return entry

    for rate in args.rates:
        entry = measure(float(rate))
        if not entry["met"]:
            misses += 1
            # Past the knee: messages failing or p95 ten times the SLO. Two misses after a met
            # step also end it; misses from the start (a loaded machine) go on up to the knee.
            overloaded = entry["p95"] is None or entry["p95"] > 10 * args.slo_ms
            if overloaded or (misses >= 2 and any(s["met"] for s in steps)):
                break
    for _ in range(args.refine):
        met = [s["rate"] for s in steps if s["met"]]
        missed = [s["rate"] for s in steps if not s["met"] and s["rate"] > max(met, default=0)]
        if not met or not missed:
            break
        low, high = max(met), min(missed)
        if high / low < 1.1:
            break
        measure(round(math.sqrt(low * high), 1))
    steps.sort(key=lambda s: s["rate"])
    met_rates = [s["rate"] for s in steps if s["met"]]
    capacity = max(met_rates, default=None)
    # Capacity is the highest rate met below the first miss (a later lucky step does not count).
    first_miss = min((s["rate"] for s in steps if not s["met"]), default=None)
    if capacity is not None and first_miss is not None and capacity > first_miss:
        capacity = max((r for r in met_rates if r < first_miss), default=None)
    at_capacity = next((s for s in steps if s["rate"] == capacity), None)
    return {
        "slo_ms": args.slo_ms,
        "capacity_msgs_per_s": capacity,
        "first_missed_rate": first_miss,
        "saturation_at_first_miss": next(
            (s["saturation"] for s in steps if s["rate"] == first_miss), None
        ),
        "cpu_ms_per_message_at_capacity": at_capacity["cpu_ms_per_message"]
        if at_capacity
        else None,
        "chunk_delay_ms": int(args.chunk_delay_ms),
        "api_processes": args.api_procs,
        "worker_processes": len(workers),
        "conversations": len(conversations),
        "idle_cores_used": idle_cores,
        "schedule": "poisson",
        "steps": steps,
    }


# --- standalone: `python -m bench.slo` ---------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser, *, prefix: str = "") -> None:
    def ints(text: str) -> list[int]:
        return [int(x) for x in text.split(",") if x]

    p.add_argument(f"--{prefix}rates", dest="rates", type=ints, default=DEFAULT_RATES)
    p.add_argument(f"--{prefix}step-seconds", dest="step_seconds", type=float, default=20.0)
    p.add_argument(
        f"--{prefix}min-messages",
        dest="min_messages",
        type=int,
        default=200,
        help="a step lasts long enough for this many messages",
    )
    p.add_argument(f"--{prefix}refine", dest="refine", type=int, default=2, help="bisections")
    p.add_argument(f"--{prefix}ms", dest="slo_ms", type=float, default=SLO_MS)
    p.add_argument(f"--{prefix}timeout", dest="timeout", type=float, default=10.0)
    p.add_argument(f"--{prefix}chunk-delay-ms", dest="chunk_delay_ms", default=CHUNK_DELAY_MS)
    p.add_argument(f"--{prefix}idle-seconds", dest="idle_seconds", type=float, default=5.0)
    p.add_argument(f"--{prefix}api-procs", dest="api_procs", type=int, default=2)
    p.add_argument(f"--{prefix}worker-procs", dest="slo_worker_procs", type=int, default=2)


def run_on(run: Any, stack: Any, users: list[User], api_procs: int) -> dict[str, Any]:
    """The SLO search on a production stack: its own API and worker processes, the demo model
    at the stated chunk delay."""
    from bench.run import log

    args = run.args
    args.api_procs = api_procs
    extra = {"DEMO_CHUNK_DELAY_MS": str(args.chunk_delay_ms)}
    stack.stop_workers()
    stack.start_workers(args.slo_worker_procs, **extra)
    # Start-up on a loaded machine has taken over a minute (issue 22's cold start).
    proc, base_url = stack.api(workers=api_procs, name="api-slo", ready_timeout=240, **extra)
    try:
        found = search_capacity(
            log,
            base_url,
            users,
            args,
            [proc],
            stack.workers,
            lambda: stack.wait_replies_idle(args.timeout * 3),
            # The backends of this run's database only: PostgreSQL is shared with other work
            # on this machine (its WAL writer and checkpointer are left out with it).
            lambda: [
                int(r[0])
                for r in stack.query(
                    "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> "
                    "pg_backend_pid()",
                    stack.database,
                )
            ],
        )
    finally:
        proc.stop()
        stack.stop_workers()
    log(
        f"  SLO capacity: {found['capacity_msgs_per_s']} msgs/s (first miss at "
        f"{found['first_missed_rate']}: {found['saturation_at_first_miss']})"
    )
    return found


def main(argv: list[str] | None = None) -> int:
    from bench.run import Run, Stack, log, setup_users

    p = argparse.ArgumentParser(prog="python -m bench.slo", description=__doc__)
    add_arguments(p)
    p.add_argument("--users", type=int, default=500)
    p.add_argument("--rooms-per-user", type=int, default=2)
    p.add_argument("--label", default="")
    p.add_argument("--src", default=None, help="a tree's src directory to run instead")
    p.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    p.add_argument("--output-dir", default=str(HERE / "results"))
    args = p.parse_args(argv)

    def interrupted(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    run = Run(args)
    started = dt.datetime.now(dt.UTC)
    try:
        stack = Stack(run, "production")
        if args.src:
            stack.base_env["PYTHONPATH"] = args.src
        stack.create()
        setup_proc, base_url = stack.api(name="api-setup", ready_timeout=240)
        users = asyncio.run(setup_users(base_url, args, args.users, 0))
        setup_proc.stop()
        found = run_on(run, stack, users, args.api_procs)
    except KeyboardInterrupt as exc:
        log(f"interrupted ({exc}); cleaning up")
        return 130
    finally:
        run.cleanup.stop_all()
        run.cleanup.run()
    found.update(
        started=started.isoformat(timespec="seconds"),
        command=" ".join(["python -m bench.slo", *sys.argv[1:]]),
        src=args.src or "this tree",
        cores=os.cpu_count(),
        load_average_at_end=[round(x, 2) for x in os.getloadavg()],
        notes=run.results["notes"],
    )
    suffix = f"-{args.label}" if args.label else ""
    out = Path(args.output_dir) / f"ttft-slo-{started.date().isoformat()}{suffix}.json"
    out.write_text(json.dumps(found, indent=2, default=str) + "\n")
    print("\n".join(table_lines(found)))
    log(f"results: {out}")
    return 0


def table_lines(found: dict[str, Any]) -> list[str]:
    """The markdown table of the steps (bench/README.md)."""
    lines = [
        "| msgs/s | TTFT p50 ms | p95 ms | p99 ms | failed | p95 parts ms: lag / send / open / "
        "first delta | CPU ms per message: API / workers / PostgreSQL / Redis / client | "
        "waited for a CPU, ms per message: API / workers / PostgreSQL | "
        "busiest process, share of a core: API / worker | machine busy | load 1 min | SLO |",
        "| ---: | ---: | ---: | ---: | ---: | --- | --- | --- | --- | ---: | --- | --- |",
    ]

    def f(v: Any) -> str:
        return "-" if v is None else (f"{v:,.1f}" if isinstance(v, float) else str(v))

    for s in found["steps"]:
        parts = s["parts_p95_ms"]
        cpu = s["cpu_ms_per_message"]
        busiest = s["busiest_process_cores"]
        waits = s.get("run_queue_wait_ms_per_message") or {}
        lines.append(
            f"| {s['rate']:g} | {f(s['p50'])} | {f(s['p95'])} | {f(s['p99'])} | {s['failed']} | "
            + " / ".join(f(parts[k]) for k in ("lag", "send", "open", "first"))
            + " | "
            + " / ".join(f(cpu[k]) for k in ("api", "workers", "postgres", "redis", "client"))
            + " | "
            + " / ".join(f(waits.get(k)) for k in ("api", "workers", "postgres"))
            + f" | {busiest['api']:.0%} / {busiest['workers']:.0%} | "
            f"{(s['machine_busy'] or 0):.0%} | {s['load_1min'][0]:.1f}-{s['load_1min'][1]:.1f} | "
            f"{'met' if s['met'] else 'missed'} |"
        )
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
