"""Same-time A/B of what AUTOINCREMENT (migration 0014) costs a SQLite insert: two database
files, the `messages` table with and without it, the send's write pattern (a transaction with
a user message and its reply, WAL, synchronous=NORMAL, as core/db.py sets), rounds alternating
which file goes first.

    .venv/bin/python -m bench.sqlite_ids [--rounds 8] [--sends 2000]

Prints the microseconds per send transaction of each, per round and the median."""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

TABLE = """CREATE TABLE messages (
    id INTEGER NOT NULL PRIMARY KEY{auto}, chatroom_id INTEGER NOT NULL, role VARCHAR(16) NOT NULL,
    content TEXT NOT NULL, status VARCHAR(16) NOT NULL, reply_to INTEGER, parent_id INTEGER,
    attempts INTEGER NOT NULL, created_at DATETIME NOT NULL, updated_at DATETIME NOT NULL)"""
INSERT = (
    "INSERT INTO messages (chatroom_id, role, content, status, reply_to, parent_id, attempts, "
    "created_at, updated_at) VALUES (1, ?, ?, ?, ?, ?, 0, '2026-12-02', '2026-12-02')"
)


def _open(path: Path, auto: bool) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(TABLE.format(auto=" AUTOINCREMENT" if auto else ""))
    conn.execute("CREATE INDEX ix_messages_chatroom_id ON messages (chatroom_id, id)")
    conn.execute("CREATE INDEX ix_messages_parent_id ON messages (parent_id, id)")
    return conn


def _sends(conn: sqlite3.Connection, count: int) -> float:
    """Seconds for `count` send transactions (a user message, then its reply under it)."""
    parent = None
    started = time.perf_counter()
    for _ in range(count):
        conn.execute("BEGIN IMMEDIATE")
        question = conn.execute(INSERT, ("user", "hello", "completed", None, parent)).lastrowid
        parent = conn.execute(INSERT, ("assistant", "", "queued", question, question)).lastrowid
        conn.execute("COMMIT")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--sends", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sides = {
            "rowid": _open(Path(tmp) / "rowid.db", auto=False),
            "autoincrement": _open(Path(tmp) / "auto.db", auto=True),
        }
        per_send: dict[str, list[float]] = {name: [] for name in sides}
        for round_ in range(args.rounds):
            order = list(sides) if round_ % 2 == 0 else list(reversed(sides))
            for name in order:
                per_send[name].append(_sends(sides[name], args.sends) / args.sends * 1e6)
        for name, values in per_send.items():
            rounds = " ".join(f"{v:.1f}" for v in values)
            print(f"{name:>13}: median {statistics.median(values):.1f} us/send  ({rounds})")
        ratio = statistics.median(per_send["autoincrement"]) / statistics.median(per_send["rowid"])
        print(f"autoincrement vs rowid: {100 * (ratio - 1):+.1f}%")


if __name__ == "__main__":
    main()
