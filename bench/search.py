"""Latency of `GET /search` over a large generated corpus, on PostgreSQL and on SQLite.

    .venv/bin/python -m bench.search [--pg-messages 1000000] [--sqlite-messages 100000]
        [--users 200] [--requests 200] [--skip-pg] [--skip-sqlite]

For each database: a fresh database migrated to head, `--users` users signed in through the
API of a real `gemini-backend serve`, then their rooms and messages written in bulk behind the
API (PostgreSQL: COPY, with the GIN index built after the copy; SQLite: executemany through the
FTS5 triggers), each message 5 to 60 words drawn from a Zipf-distributed vocabulary of 20,000
made-up words (a few words are in most messages, most words in few). Then, one request at a time,
`--requests` searches of each kind, each by a user drawn in turn, and their p50/p95/max:

- rare: a word about 1 in 20,000 draws (a few hits per user);
- common: the 20th most frequent word (in about a tenth of the messages: thousands per user);
- two words: a frequent and a mid-frequency word (AND);
- phrase: two frequent words as a quoted phrase;
- page 2: `common` again with the first page's cursor;
- none: a word that is nowhere.

Everything it creates (the processes, the PostgreSQL database, the SQLite file) is removed at
the end. Prints a table; the figures go to bench/README.md by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import random
import secrets
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from bench.api import Api, User, bounded, number
from bench.procs import Proc, clean_env, free_port

ROOT = Path(__file__).resolve().parent.parent
VOCABULARY = 20_000
ROOMS_PER_USER = 20
USER_BASE = 9_300_000_000
LIFTED = {
    "OTP_SENDS_PER_IP_PER_HOUR": "1000000000",
    "OTP_SENDS_PER_NUMBER_PER_HOUR": "1000000",
    "AUTH_ATTEMPTS_PER_IP_PER_MINUTE": "1000000000",
    "LOG_LEVEL": "WARNING",
    # Requests come one at a time; the machine's PostgreSQL is shared with other work.
    "DB_POOL_SIZE": "4",
}
SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]


def log(message: str) -> None:
    print(f"[search-bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def vocabulary(rng: random.Random) -> list[str]:
    words: set[str] = set()
    while len(words) < VOCABULARY:
        words.add("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))))
    ranked = sorted(words)
    rng.shuffle(ranked)  # rank order: index 0 is the most frequent
    return ranked


class Corpus:
    """Messages of Zipf-distributed words, drawn in chunks (random.choices over cumulative
    weights is the fast path)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.words = vocabulary(self.rng)
        weights = [1.0 / (rank + 1) for rank in range(VOCABULARY)]
        total = 0.0
        self.cumulative = []
        for weight in weights:
            total += weight
            self.cumulative.append(total)

    def messages(self, count: int) -> Iterator[str]:
        chunk = 100_000
        while count > 0:
            n = min(chunk, count)
            lengths = [self.rng.randint(5, 60) for _ in range(n)]
            drawn = self.rng.choices(self.words, cum_weights=self.cumulative, k=sum(lengths))
            start = 0
            for length in lengths:
                yield " ".join(drawn[start : start + length])
                start += length
            count -= n

    def queries(self) -> dict[str, str]:
        w = self.words
        return {
            "rare": w[15_000],
            "common": w[19],
            "two words": f"{w[5]} {w[400]}",
            "phrase": f'"{w[0]} {w[1]}"',
            "none": "zzzzqqqq",
        }


def start_api(env: dict[str, str], tmp: Path) -> tuple[Proc, str]:
    migrate = [sys.executable, "-m", "gemini_backend.cli", "migrate"]
    subprocess.run(migrate, env=env, cwd=ROOT, check=True, capture_output=True)
    port = free_port()
    proc = Proc(
        f"api-{port}",
        [sys.executable, "-m", "gemini_backend.cli", "serve", "--port", str(port)],
        env=env,
        cwd=ROOT,
        log_dir=tmp,
    )
    base = f"http://127.0.0.1:{port}"
    proc.wait_http(f"{base}/health", timeout=120)
    return proc, base


async def sign_in_users(base: str, count: int) -> list[User]:
    async with Api(base, 32) as api:
        return await bounded(
            [lambda i=i: api.sign_in(number(i, USER_BASE)) for i in range(count)], 16
        )


def rows_of(users: list[User], messages: int, corpus: Corpus) -> Iterator[tuple[Any, ...]]:
    """(room index, user id, role, content) for `messages` messages spread over the users'
    rooms evenly."""
    rooms = [(user.user_id, r) for user in users for r in range(ROOMS_PER_USER)]
    for n, content in enumerate(corpus.messages(messages)):
        room = n % len(rooms)
        yield room, rooms[room][0], "user" if n % 2 == 0 else "assistant", content


def measure(base: str, users: list[User], queries: dict[str, str], requests: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with httpx.Client(base_url=base, timeout=120) as client:
        cursors: list[tuple[User, str]] = []
        for kind, q in queries.items():
            times, hits = [], []
            for i in range(requests):
                user = users[i % len(users)]
                headers = {"Authorization": f"Bearer {user.token}"}
                began = time.perf_counter()
                response = client.get("/search", params={"q": q}, headers=headers)
                times.append((time.perf_counter() - began) * 1000)
                if response.status_code != 200:
                    raise RuntimeError(f"{kind}: {response.status_code} {response.text[:300]}")
                body = response.json()
                hits.append(len(body["results"]))
                if kind == "common" and body["next_cursor"]:
                    cursors.append((user, body["next_cursor"]))
            results[kind] = summary(times) | {"results per page": statistics.mean(hits)}
        times = []
        for user, cursor in cursors[:requests]:
            headers = {"Authorization": f"Bearer {user.token}"}
            began = time.perf_counter()
            response = client.get(
                "/search", params={"q": queries["common"], "cursor": cursor}, headers=headers
            )
            times.append((time.perf_counter() - began) * 1000)
            if response.status_code != 200:
                raise RuntimeError(f"page 2: {response.status_code} {response.text[:300]}")
        if times:
            results["page 2 (common)"] = summary(times) | {"results per page": 20}
    return results


def summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {
        "p50": statistics.median(ordered),
        "p95": ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))],
        "max": ordered[-1],
    }


# --- PostgreSQL ---------------------------------------------------------------------------


async def pg_fill(dsn: str, users: list[User], messages: int, corpus: Corpus) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    now = datetime.now(UTC)
    try:
        room_rows = [
            (user.user_id, f"room {r} {corpus.words[r * 37]}", now, now, now)
            for user in users
            for r in range(ROOMS_PER_USER)
        ]
        room_ids = [
            row["id"]
            for row in await conn.fetch(
                "INSERT INTO chatrooms (user_id, name, auto_title, message_count, activity_at, "
                "created_at, updated_at, grounding) SELECT u, n, false, 0, a, c, up, false "
                "FROM unnest($1::bigint[], $2::text[], $3::timestamptz[], $4::timestamptz[], "
                "$5::timestamptz[]) AS t(u, n, a, c, up) RETURNING id",
                *[list(col) for col in zip(*room_rows, strict=True)],
            )
        ]
        await conn.execute("DROP INDEX ix_messages_search")
        began = time.monotonic()
        buffer = io.BytesIO()
        for n, (room, _user, role, content) in enumerate(rows_of(users, messages, corpus)):
            at = (now - timedelta(seconds=messages - n)).isoformat()
            buffer.write(
                f"{room_ids[room]}\t{role}\t{content}\tcompleted\t0\t{at}\t{at}\n".encode()
            )
            written = n + 1
            if written % 200_000 == 0:
                await copy(conn, buffer)
                log(f"postgresql: {written:,} messages copied")
        await copy(conn, buffer)
        copied = time.monotonic() - began
        await conn.execute("SET maintenance_work_mem = '512MB'")
        began = time.monotonic()
        await conn.execute("CREATE INDEX ix_messages_search ON messages USING gin (search_vector)")
        indexed = time.monotonic() - began
        await conn.execute("ANALYZE")
        size = await conn.fetchval("SELECT pg_size_pretty(pg_total_relation_size('messages'))")
        gin = await conn.fetchval("SELECT pg_size_pretty(pg_relation_size('ix_messages_search'))")
        return {"copy_s": copied, "gin_build_s": indexed, "messages_size": size, "gin_size": gin}
    finally:
        await conn.close()


async def copy(conn: asyncpg.Connection, buffer: io.BytesIO) -> None:
    buffer.seek(0)
    await conn.copy_to_table(
        "messages",
        source=buffer,
        columns=[
            "chatroom_id",
            "role",
            "content",
            "status",
            "attempts",
            "created_at",
            "updated_at",
        ],
    )
    buffer.seek(0)
    buffer.truncate()


def run_postgresql(args: argparse.Namespace, corpus: Corpus) -> dict[str, Any]:
    name = f"gb_bench_search_{secrets.token_hex(4)}"
    admin = args.pg_url
    base_dsn = admin.rsplit("/", 1)[0]
    asyncio.run(pg_execute(admin, f'CREATE DATABASE "{name}"'))
    proc = None
    try:
        with tempfile.TemporaryDirectory(prefix="gb-bench-search-") as tmp:
            env = clean_env(
                DATA_DIR=tmp,
                DATABASE_URL=f"{base_dsn.replace('postgresql://', 'postgresql+asyncpg://')}/{name}",
                REDIS_URL=args.redis_url,
                REDIS_KEY_PREFIX=f"gbbench-search-{secrets.token_hex(3)}",
                **LIFTED,
            )
            proc, base = start_api(env, Path(tmp))
            try:
                users = asyncio.run(sign_in_users(base, args.users))
            except RuntimeError:
                log(proc.tail())
                raise
            log(f"postgresql: {len(users)} users; copying {args.pg_messages:,} messages")
            fill = asyncio.run(pg_fill(f"{base_dsn}/{name}", users, args.pg_messages, corpus))
            log(f"postgresql: filled {fill}")
            results = measure(base, users, corpus.queries(), args.requests)
            return {"fill": fill, "results": results}
    finally:
        if proc is not None:
            proc.stop()
        asyncio.run(pg_execute(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def pg_execute(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


# --- SQLite -------------------------------------------------------------------------------


def sqlite_fill(path: Path, users: list[User], messages: int, corpus: Corpus) -> dict[str, Any]:
    db = sqlite3.connect(path)
    now = datetime.now(UTC).replace(tzinfo=None)
    try:
        room_ids = []
        for user in users:
            for r in range(ROOMS_PER_USER):
                cursor = db.execute(
                    "INSERT INTO chatrooms (user_id, name, auto_title, message_count, "
                    "activity_at, created_at, updated_at, grounding) "
                    "VALUES (?, ?, 0, 0, ?, ?, ?, 0)",
                    (user.user_id, f"room {r} {corpus.words[r * 37]}", now, now, now),
                )
                room_ids.append(cursor.lastrowid)
        began = time.monotonic()
        batch: list[tuple[Any, ...]] = []
        for n, (room, _user, role, content) in enumerate(rows_of(users, messages, corpus)):
            at = now - timedelta(seconds=messages - n)
            batch.append((room_ids[room], role, content, at, at))
            if len(batch) == 20_000:
                insert_messages(db, batch)
        insert_messages(db, batch)
        db.commit()
        filled = time.monotonic() - began
        db.execute("ANALYZE")
        db.commit()
        return {"insert_s": filled, "file_mb": round(path.stat().st_size / 1e6)}
    finally:
        db.close()


def insert_messages(db: sqlite3.Connection, batch: list[tuple[Any, ...]]) -> None:
    db.executemany(
        "INSERT INTO messages (chatroom_id, role, content, status, attempts, created_at, "
        "updated_at) VALUES (?, ?, ?, 'completed', 0, ?, ?)",
        batch,
    )
    batch.clear()


def run_sqlite(args: argparse.Namespace, corpus: Corpus) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="gb-bench-search-") as tmp:
        path = Path(tmp) / "bench.db"
        env = clean_env(DATA_DIR=tmp, DATABASE_URL=f"sqlite+aiosqlite:///{path}", **LIFTED)
        proc, base = start_api(env, Path(tmp))
        try:
            users = asyncio.run(sign_in_users(base, args.users))
        finally:
            proc.stop()  # the bulk insert takes SQLite's write lock; the server waits
        log(f"sqlite: {len(users)} users; inserting {args.sqlite_messages:,} messages")
        fill = sqlite_fill(path, users, args.sqlite_messages, corpus)
        log(f"sqlite: filled {fill}")
        proc, base = start_api(env, Path(tmp))
        try:
            return {"fill": fill, "results": measure(base, users, corpus.queries(), args.requests)}
        finally:
            proc.stop()


def print_table(title: str, results: dict[str, Any]) -> None:
    print(f"\n{title}: {results['fill']}")
    print("| query | p50 ms | p95 ms | max ms | results per page |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for kind, r in results["results"].items():
        print(
            f"| {kind} | {r['p50']:.1f} | {r['p95']:.1f} | {r['max']:.1f} | "
            f"{r['results per page']:.1f} |"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--pg-messages", type=int, default=1_000_000)
    p.add_argument("--sqlite-messages", type=int, default=100_000)
    p.add_argument("--users", type=int, default=200)
    p.add_argument("--requests", type=int, default=200, help="requests per query kind")
    p.add_argument("--skip-pg", action="store_true")
    p.add_argument("--skip-sqlite", action="store_true")
    p.add_argument("--seed", type=int, default=20261202)
    p.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    args = p.parse_args(argv)
    if not args.skip_sqlite:
        print_table(
            f"SQLite, {args.sqlite_messages:,} messages, {args.users} users",
            run_sqlite(args, Corpus(args.seed)),
        )
    if not args.skip_pg:
        print_table(
            f"PostgreSQL, {args.pg_messages:,} messages, {args.users} users",
            run_postgresql(args, Corpus(args.seed)),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
