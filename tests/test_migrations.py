"""The Alembic migrations build exactly the schema of the models, and go down and up again."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import bindparam, inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncSession

from gemini_backend.config import Settings
from gemini_backend.core.db import UTCDateTime, create_engine
from gemini_backend.migrate import alembic_config, head_revisions, is_at_head, upgrade_to_head
from gemini_backend.models import metadata
from gemini_backend.search.repository import FIRST, PostgresqlSearch, SqliteSearch
from gemini_backend.search.schema import SEARCH_TABLES, SQLITE_TRIGGERS, is_search_object
from tests.conftest import BACKEND, JWT_SECRET, TEST_DATABASE_URL

if BACKEND != "production":
    KINDS = ["sqlite"]
elif os.environ.get("GB_TEST_MODE_FREE_ONCE") == "1":
    KINDS = ["postgresql"]  # `make test-fast`: the SQLite cases, the same in both, run embedded
else:
    KINDS = ["sqlite", "postgresql"]


def _settings(url: str, data_dir: Path) -> Settings:
    return Settings(  # type: ignore[call-arg]
        _env_file=None,
        environment="test",
        jwt_secret=JWT_SECRET,
        database_url=url,
        data_dir=data_dir,
        log_format="console",
    )


def _asyncpg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(_asyncpg_dsn(TEST_DATABASE_URL))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(params=KINDS)
def fresh_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    """Settings on a database of its own that has never seen a migration."""
    if request.param == "sqlite":
        yield _settings(f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}", tmp_path / "data")
        return
    name = f"gb_migrations_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        base, _, _ = TEST_DATABASE_URL.rpartition("/")
        yield _settings(f"{base}/{name}", tmp_path / "data")
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _inspect(settings: Settings) -> dict[str, Any]:
    """Tables, the Alembic revision and the differences between the database and the models."""

    def work(conn: Connection) -> dict[str, Any]:
        context = MigrationContext.configure(
            conn,
            opts={
                "compare_type": True,
                "compare_server_default": True,
                "include_name": lambda name, type_, _: not is_search_object(name, type_),
            },
        )
        return {
            # The search index's tables (SQLite's FTS5) are migration 0015's, not the models'.
            "tables": set(inspect(conn).get_table_names()) - SEARCH_TABLES,
            "revision": context.get_current_revision(),
            "diff": compare_metadata(context, metadata),
        }

    async def run() -> dict[str, Any]:
        engine = create_engine(settings)
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(work)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _head(settings: Settings) -> str:
    head = ScriptDirectory.from_config(alembic_config(settings)).get_current_head()
    assert head is not None
    return head


def test_upgrade_builds_the_schema_of_the_models(fresh_settings):
    before = _inspect(fresh_settings)
    assert before["tables"] == set()
    assert before["revision"] is None

    upgrade_to_head(fresh_settings)

    after = _inspect(fresh_settings)
    assert after["tables"] == {*metadata.tables, "alembic_version"}
    assert after["revision"] == _head(fresh_settings)
    assert after["diff"] == [], "the migrations and the models differ; run autogenerate"


def test_upgrade_twice_is_a_no_op(fresh_settings):
    upgrade_to_head(fresh_settings)
    upgrade_to_head(fresh_settings)
    state = _inspect(fresh_settings)
    assert state["revision"] == _head(fresh_settings)
    assert state["diff"] == []


def test_downgrade_to_base_and_upgrade_again(fresh_settings):
    config = alembic_config(fresh_settings)
    upgrade_to_head(fresh_settings)

    command.downgrade(config, "base")
    down = _inspect(fresh_settings)
    assert down["tables"] <= {"alembic_version"}, down["tables"]
    assert down["revision"] is None

    upgrade_to_head(fresh_settings)
    up = _inspect(fresh_settings)
    assert up["tables"] == {*metadata.tables, "alembic_version"}
    assert up["revision"] == _head(fresh_settings)
    assert up["diff"] == []


def test_every_revision_steps_down_and_up(fresh_settings):
    """Each migration's downgrade undoes its upgrade, one step at a time."""
    config = alembic_config(fresh_settings)
    script = ScriptDirectory.from_config(config)
    revisions = [r.revision for r in script.walk_revisions("base", "heads")]
    upgrade_to_head(fresh_settings)
    for _ in revisions:
        command.downgrade(config, "-1")
    assert _inspect(fresh_settings)["revision"] is None
    for _ in revisions:
        command.upgrade(config, "+1")
    final = _inspect(fresh_settings)
    assert final["revision"] == _head(fresh_settings)
    assert final["diff"] == []


async def test_upgrade_from_a_running_event_loop_via_a_thread(fresh_settings):
    # upgrade_to_head uses asyncio.run: from async code it must run in a worker thread.
    await asyncio.to_thread(upgrade_to_head, fresh_settings)
    state = await asyncio.to_thread(_inspect, fresh_settings)
    assert state["revision"] == _head(fresh_settings)


def test_single_head():
    settings = _settings("sqlite+aiosqlite:///unused.db", Path("unused"))
    assert len(ScriptDirectory.from_config(alembic_config(settings)).get_heads()) == 1


def test_the_heads_read_from_the_files_are_alembics():
    settings = _settings("sqlite+aiosqlite:///unused.db", Path("unused"))
    heads = ScriptDirectory.from_config(alembic_config(settings)).get_heads()
    assert head_revisions() == frozenset(heads)


def test_a_database_behind_the_head_is_upgraded(fresh_settings):
    assert upgrade_to_head(fresh_settings) is True  # a new database
    assert is_at_head(fresh_settings)
    command.downgrade(alembic_config(fresh_settings), "-1")
    assert not is_at_head(fresh_settings)

    assert upgrade_to_head(fresh_settings) is True
    state = _inspect(fresh_settings)
    assert state["revision"] == _head(fresh_settings)
    assert state["diff"] == []


def test_a_database_at_the_head_is_left_without_loading_alembic(fresh_settings):
    upgrade_to_head(fresh_settings)
    # A process of its own: this one has Alembic loaded already.
    script = (
        "import sys\n"
        "from gemini_backend.config import Settings\n"
        "from gemini_backend.migrate import upgrade_to_head\n"
        f"ran = upgrade_to_head(Settings(_env_file=None, environment='test', "
        f"jwt_secret={JWT_SECRET!r}, database_url={fresh_settings.database_url!r}, "
        f"data_dir={str(fresh_settings.data_dir)!r}))\n"
        "print(ran, sorted({m.split('.')[0] for m in sys.modules} & {'alembic', 'mako'}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split() == ["False", "[]"], done.stderr


def test_0007_ends_all_but_the_newest_reply_in_progress_of_a_message(fresh_settings):
    """Replies queued side by side by concurrent retries before 0007 would block its unique
    index of replies in progress: the upgrade keeps the newest of each message's."""
    config = alembic_config(fresh_settings)
    command.upgrade(config, "0006")
    at = bindparam("at", type_=UTCDateTime())
    user = text(
        "INSERT INTO users (id, mobile_number, created_at, updated_at) "
        "VALUES (1, '+919876500000', :at, :at)"
    ).bindparams(at)
    room = text(
        "INSERT INTO chatrooms (id, user_id, name, auto_title, message_count, activity_at, "
        "created_at, updated_at) VALUES (1, 1, 'r', false, 0, :at, :at, :at)"
    ).bindparams(at)
    message = text(
        "INSERT INTO messages (id, chatroom_id, role, content, status, attempts, reply_to, "
        "created_at, updated_at) VALUES (:id, 1, :role, '', :status, 0, :reply_to, :at, :at)"
    ).bindparams(at)
    replies = [(1, "user", "completed", None), (2, "assistant", "completed", 1)]
    replies += [(3, "assistant", "generating", 1), (4, "assistant", "queued", 1)]
    replies += [(5, "assistant", "queued", 1), (6, "user", "completed", None)]
    replies += [(7, "assistant", "queued", 6)]
    now = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
    rows: list[tuple[Any, dict[str, Any]]] = [(user, {"at": now}), (room, {"at": now})]
    for id_, role, status, reply_to in replies:
        values = {"id": id_, "role": role, "status": status, "reply_to": reply_to, "at": now}
        rows.append((message, values))

    async def run(statements: list[tuple[Any, dict[str, Any]]]) -> list[Any]:
        engine = create_engine(fresh_settings)
        try:
            async with engine.begin() as conn:
                for statement, values in statements:
                    await conn.execute(statement, values)
                return list(await conn.execute(text("SELECT id, status FROM messages ORDER BY id")))
        finally:
            await engine.dispose()

    asyncio.run(run(rows))
    upgrade_to_head(fresh_settings)
    statuses = dict(asyncio.run(run([])))
    assert statuses == {
        1: "completed",
        2: "completed",
        3: "cancelled",
        4: "cancelled",
        5: "queued",
        6: "completed",
        7: "queued",
    }


def test_0005_keeps_running_lockouts_as_number_guards(fresh_settings):
    """Login guards filled by 0001 become the numbers' auth guards, locks and counts kept; the
    users table gains the pending password, empty for everyone."""
    config = alembic_config(fresh_settings)
    command.upgrade(config, "0004")
    at = bindparam("at", type_=UTCDateTime())
    until = datetime(2026, 11, 22, 10, 15, tzinfo=UTC)
    statements = [
        (
            text(
                "INSERT INTO users (id, mobile_number, password_hash, created_at, updated_at) "
                "VALUES (1, '+919876500000', 'h', :at, :at)"
            ).bindparams(at),
            {"at": until},
        ),
        (
            text(
                "INSERT INTO login_guards (mobile_number, consecutive_failures, locked_until) "
                "VALUES ('+919876500000', 0, :at), ('+919876500001', 3, NULL)"
            ).bindparams(at),
            {"at": until},
        ),
    ]

    async def run(sql: list[tuple[Any, dict[str, Any]]], query: str) -> list[Any]:
        engine = create_engine(fresh_settings)
        try:
            async with engine.begin() as conn:
                for statement, values in sql:
                    await conn.execute(statement, values)
                return list(await conn.execute(text(query))) if query else []
        finally:
            await engine.dispose()

    asyncio.run(run(statements, ""))
    command.upgrade(config, "0005")
    guards = asyncio.run(
        run([], "SELECT subject, failures, locked_until, last_failure_at FROM auth_guards")
    )
    by_subject = {row[0]: row[1:] for row in guards}
    assert set(by_subject) == {"+919876500000", "+919876500001"}
    assert by_subject["+919876500001"][0] == 3
    assert by_subject["+919876500000"][1] is not None  # still locked
    assert all(row[2] is not None for row in by_subject.values())  # quiet period starts now
    users = asyncio.run(run([], "SELECT password_hash, pending_password_hash FROM users"))
    assert users == [("h", None)]
    assert "login_guards" not in _tables(fresh_settings)


def _tables(settings: Settings) -> set[str]:
    async def read() -> set[str]:
        engine = create_engine(settings)
        try:
            async with engine.connect() as conn:
                return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
        finally:
            await engine.dispose()

    return asyncio.run(read())


def test_0008_makes_each_room_one_branch_with_retried_replies_as_siblings(fresh_settings):
    """Rooms filled at 0007 (a linear history where retries added replies to older messages)
    become trees: one branch in id order, each retry a sibling of the reply it redid, and the
    active leaf the newest reply to the newest user message."""
    config = alembic_config(fresh_settings)
    command.upgrade(config, "0007")
    at = bindparam("at", type_=UTCDateTime())
    statements: list[tuple[Any, dict[str, Any]]] = [
        (
            text(
                "INSERT INTO users (id, mobile_number, created_at, updated_at) "
                "VALUES (1, '+919876500000', :at, :at)"
            ).bindparams(at),
            {"at": MIGRATED_AT},
        )
    ]
    room = text(
        "INSERT INTO chatrooms (id, user_id, name, auto_title, message_count, activity_at, "
        "created_at, updated_at) VALUES (:id, 1, 'r', false, 0, :at, :at, :at)"
    ).bindparams(at)
    statements += [(room, {"id": i, "at": MIGRATED_AT}) for i in (1, 2, 3)]  # 3 stays empty
    message = text(
        "INSERT INTO messages (id, chatroom_id, role, content, status, attempts, reply_to, "
        "created_at, updated_at) VALUES (:id, :room, :role, :content, :status, 0, :reply_to, "
        ":at, :at)"
    ).bindparams(at)
    for id_, room_id, role, status, reply_to in MESSAGES_AT_0007:
        values = {"id": id_, "room": room_id, "role": role, "content": f"m{id_}"}
        values |= {"status": status, "reply_to": reply_to, "at": MIGRATED_AT}
        statements.append((message, values))

    async def run(sql: list[tuple[Any, dict[str, Any]]], query: str) -> list[Any]:
        engine = create_engine(fresh_settings)
        try:
            async with engine.begin() as conn:
                for statement, values in sql:
                    await conn.execute(statement, values)
                return list(await conn.execute(text(query))) if query else []
        finally:
            await engine.dispose()

    asyncio.run(run(statements, ""))
    upgrade_to_head(fresh_settings)
    rows = asyncio.run(run([], "SELECT id, chatroom_id, parent_id FROM messages ORDER BY id"))
    parents = {id_: parent for id_, _, parent in rows}
    rooms = {id_: room_id for id_, room_id, _ in rows}
    assert parents == {
        # room 1: 1 q1 -> 2 a1 -> 4 q2 -> 7 a2' -> 9 q3 -> 10 a3, and the retries 6, 11, 13
        1: None,
        2: 1,
        4: 2,
        6: 4,  # the reply that failed, redone by 7 before q3 was sent
        7: 4,
        9: 7,  # under the newest reply to q2 made before q3, not 13 made after it
        10: 9,
        11: 1,  # a retry of q1 made after the rest: a sibling of 2
        13: 4,  # a retry of q2 made after q3: a sibling of 6 and 7
        # room 2, interleaved with room 1: 3 p1 -> 5 b1 -> 8 p2 -> 12 b2 -> 14 p3 -> 15 (queued)
        3: None,
        5: 3,
        8: 5,
        12: 8,
        14: 12,
        15: 14,
    }
    for id_, parent in parents.items():
        assert parent is None or (parent < id_ and rooms[parent] == rooms[id_])
    leaves = dict(asyncio.run(run([], "SELECT id, active_leaf_id FROM chatrooms ORDER BY id")))
    assert leaves == {1: 10, 2: 15, 3: None}


def test_0008_down_and_up_again_keeps_every_message(fresh_settings):
    """Below 0008 and back: no message is lost (on SQLite a table is rebuilt to change it,
    and the drop of the old one must not fire the foreign keys' ON DELETE actions)."""
    upgrade_to_head(fresh_settings)
    at = bindparam("at", type_=UTCDateTime())
    statements: list[tuple[Any, dict[str, Any]]] = [
        (
            text(
                "INSERT INTO users (id, mobile_number, created_at, updated_at) "
                "VALUES (1, '+919876500000', :at, :at)"
            ).bindparams(at),
            {"at": MIGRATED_AT},
        ),
        (
            text(
                "INSERT INTO chatrooms (id, user_id, name, auto_title, message_count, "
                "activity_at, active_leaf_id, created_at, updated_at) "
                "VALUES (1, 1, 'r', false, 5, :at, 4, :at, :at)"
            ).bindparams(at),
            {"at": MIGRATED_AT},
        ),
    ]
    message = text(
        "INSERT INTO messages (id, chatroom_id, role, content, status, attempts, reply_to, "
        "parent_id, created_at, updated_at) VALUES (:id, 1, :role, '', 'completed', 0, "
        ":reply_to, :parent, :at, :at)"
    ).bindparams(at)
    # 1 q1 -> 2 a1 -> 3 q2 -> 4 a2, and 5 a retry of q1
    tree = [(1, "user", None, None), (2, "assistant", 1, 1), (3, "user", None, 2)]
    tree += [(4, "assistant", 3, 3), (5, "assistant", 1, 1)]
    for id_, role, reply_to, parent in tree:
        values = {"id": id_, "role": role, "reply_to": reply_to, "parent": parent}
        statements.append((message, {**values, "at": MIGRATED_AT}))

    async def run(sql: list[tuple[Any, dict[str, Any]]], query: str) -> list[Any]:
        engine = create_engine(fresh_settings)
        try:
            async with engine.begin() as conn:
                for statement, values in sql:
                    await conn.execute(statement, values)
                return list(await conn.execute(text(query))) if query else []
        finally:
            await engine.dispose()

    asyncio.run(run(statements, ""))
    command.downgrade(alembic_config(fresh_settings), "0007")
    below = asyncio.run(run([], "SELECT id, reply_to FROM messages ORDER BY id"))
    assert below == [(1, None), (2, 1), (3, None), (4, 3), (5, 1)]
    upgrade_to_head(fresh_settings)
    again = asyncio.run(run([], "SELECT id, parent_id FROM messages ORDER BY id"))
    assert again == [(id_, parent) for id_, _, _, parent in tree]
    assert asyncio.run(run([], "SELECT active_leaf_id FROM chatrooms")) == [(4,)]


MIGRATED_AT = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
# (id, room, role, status, reply_to) as 0007 left them: two rooms' messages interleaved.
MESSAGES_AT_0007 = [
    (1, 1, "user", "completed", None),
    (2, 1, "assistant", "completed", 1),
    (3, 2, "user", "completed", None),
    (4, 1, "user", "completed", None),
    (5, 2, "assistant", "completed", 3),
    (6, 1, "assistant", "failed", 4),
    (7, 1, "assistant", "completed", 4),
    (8, 2, "user", "completed", None),
    (9, 1, "user", "completed", None),
    (10, 1, "assistant", "completed", 9),
    (11, 1, "assistant", "completed", 1),
    (12, 2, "assistant", "completed", 8),
    (13, 1, "assistant", "completed", 4),
    (14, 2, "user", "completed", None),
    (15, 2, "assistant", "queued", 14),
]


async def _search_hits(settings: Settings, query: str) -> list[tuple[int, int]]:
    engine = create_engine(settings)
    searcher = (
        PostgresqlSearch(settings.search_text_config)
        if engine.dialect.name == "postgresql"
        else SqliteSearch()
    )
    try:
        async with AsyncSession(engine) as session:
            hits = await searcher.search(session, user_id=1, query=query, after=FIRST, limit=50)
        return [(hit.kind, hit.id) for hit in hits]
    finally:
        await engine.dispose()


def test_0015_makes_existing_messages_and_rooms_searchable(fresh_settings):
    """Rows written before 0015 are found after it: completed messages and room names, not a
    reply still queued or one that failed; and the index follows later writes."""
    config = alembic_config(fresh_settings)
    command.upgrade(config, "0014")
    at = bindparam("at", type_=UTCDateTime())
    room = text(
        "INSERT INTO chatrooms (id, user_id, name, auto_title, message_count, activity_at, "
        "created_at, updated_at) VALUES (:id, 1, :name, false, 0, :at, :at, :at)"
    ).bindparams(at)
    message = text(
        "INSERT INTO messages (id, chatroom_id, role, content, status, attempts, parent_id, "
        "created_at, updated_at) VALUES (:id, 1, :role, :content, :status, 0, :parent, :at, :at)"
    ).bindparams(at)
    rows: list[tuple[Any, dict[str, Any]]] = [
        (
            text(
                "INSERT INTO users (id, mobile_number, created_at, updated_at) "
                "VALUES (1, '+919876500000', :at, :at)"
            ).bindparams(at),
            {"at": MIGRATED_AT},
        ),
        (room, {"id": 1, "name": "Pelican plans", "at": MIGRATED_AT}),
        (room, {"id": 2, "name": "Other", "at": MIGRATED_AT}),
    ]
    for id_, role, content, status in [
        (1, "user", "where do pelicans nest", "completed"),
        (2, "assistant", "pelicans nest on islands", "completed"),
        (3, "assistant", "pelicans, partly", "failed"),
        (4, "user", "and herons", "completed"),
        (5, "assistant", "", "queued"),
    ]:
        values = {"id": id_, "role": role, "content": content, "status": status}
        rows.append((message, {**values, "parent": id_ - 1 or None, "at": MIGRATED_AT}))

    async def write(statements: list[tuple[Any, dict[str, Any]]]) -> None:
        engine = create_engine(fresh_settings)
        try:
            async with engine.begin() as conn:
                for statement, values in statements:
                    await conn.execute(statement, values)
        finally:
            await engine.dispose()

    asyncio.run(write(rows))
    upgrade_to_head(fresh_settings)
    assert sorted(asyncio.run(_search_hits(fresh_settings, "pelicans"))) == [(0, 1), (0, 2)]
    assert asyncio.run(_search_hits(fresh_settings, "pelican")) == [(1, 1)]
    finish = text("UPDATE messages SET status = 'completed', content = 'herons wade' WHERE id = 5")
    asyncio.run(write([(finish, {}), (text("DELETE FROM chatrooms WHERE id = 2"), {})]))
    assert sorted(asyncio.run(_search_hits(fresh_settings, "herons"))) == [(0, 4), (0, 5)]


def test_the_search_triggers_are_there_at_head(fresh_settings):
    """A later SQLite migration that rebuilds `messages` or `chatrooms` in a batch drops their
    triggers with the old table: it must create them again."""
    upgrade_to_head(fresh_settings)

    async def triggers() -> set[str]:
        engine = create_engine(fresh_settings)
        try:
            async with engine.connect() as conn:
                if engine.dialect.name != "sqlite":
                    return set(SQLITE_TRIGGERS)
                found = await conn.execute(
                    text("SELECT name FROM sqlite_master WHERE type = 'trigger'")
                )
                return {name for (name,) in found}
        finally:
            await engine.dispose()

    assert asyncio.run(triggers()) >= SQLITE_TRIGGERS


def _plan(
    settings: Settings,
    before: list[tuple[Any, Any]],
    rows: list[tuple[Any, Any]],
    query: str,
) -> Any:
    """Write `before`, VACUUM ANALYZE (statistics of that state, as autovacuum leaves them),
    write `rows`, then the plan of `query` (PostgreSQL: EXPLAIN ANALYZE as JSON; SQLite: EXPLAIN
    QUERY PLAN's details joined)."""

    async def write(engine: Any, statements: list[tuple[Any, Any]]) -> None:
        async with engine.begin() as conn:
            for statement, values in statements:
                await conn.execute(statement, values)

    async def run() -> Any:
        engine = create_engine(settings)
        try:
            await write(engine, before)
            async with engine.connect() as conn:
                conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
                await conn.execute(
                    text("VACUUM ANALYZE" if engine.dialect.name != "sqlite" else "ANALYZE")
                )
            await write(engine, rows)
            async with engine.begin() as conn:
                if engine.dialect.name == "sqlite":
                    found = await conn.execute(text(f"EXPLAIN QUERY PLAN {query}"))
                    return " | ".join(str(row[-1]) for row in found)
                found = await conn.execute(text(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {query}"))
                plan = found.scalar_one()
                return (json.loads(plan) if isinstance(plan, str) else plan)[0]
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    return [node, *(n for child in node.get("Plans", ()) for n in _nodes(child))]


def test_0016_finds_a_reply_of_a_backlog_by_id(fresh_settings):
    """After 0016 the claim, heartbeat and finish find their reply by id however many replies
    are queued: before it PostgreSQL read the whole of the live-reply index for each of them
    (its statistics, taken when the table was empty, said it was empty; issue 22), 5,000
    buffers with 10,000 queued. The whole-table status index is gone."""
    upgrade_to_head(fresh_settings)
    at = bindparam("at", type_=UTCDateTime())
    backlog = 3000
    message = text(
        "INSERT INTO messages (id, chatroom_id, role, content, status, attempts, reply_to, "
        "parent_id, created_at, updated_at) "
        "VALUES (:id, 1, :role, :content, :status, 0, :answers, :answers, :at, :at)"
    ).bindparams(at)
    before: list[tuple[Any, Any]] = [
        (
            text(
                "INSERT INTO users (id, mobile_number, created_at, updated_at) "
                "VALUES (1, '+919876500000', :at, :at)"
            ).bindparams(at),
            {"at": MIGRATED_AT},
        ),
        (
            text(
                "INSERT INTO chatrooms (id, user_id, name, auto_title, message_count, "
                "activity_at, created_at, updated_at) VALUES (1, 1, 'r', false, 0, :at, :at, :at)"
            ).bindparams(at),
            {"at": MIGRATED_AT},
        ),
        (
            message,
            [
                {"id": i, "role": "user", "content": "question", "status": "completed"}
                | {"answers": None, "at": MIGRATED_AT}
                for i in range(1, 2 * backlog, 2)
            ],
        ),
    ]
    # A reply queued for each of those messages, after the statistics were taken.
    queued = [
        {"id": i, "role": "assistant", "content": "", "status": "queued", "answers": i - 1}
        | {"at": MIGRATED_AT}
        for i in range(2, 2 * backlog + 1, 2)
    ]
    claim = "UPDATE messages SET status = 'generating' WHERE id = 2000 AND status = 'queued' "
    claim += "AND role = 'assistant'"
    plan = _plan(fresh_settings, before, [(message, queued)], claim)
    if isinstance(plan, str):  # SQLite: the rowid, always
        assert "INTEGER PRIMARY KEY" in plan, plan
    else:
        scans = [n for n in _nodes(plan["Plan"]) if "Index Name" in n]
        assert scans, plan
        assert all("id = " in n.get("Index Cond", "") for n in scans), plan
        assert "uq_messages_live_reply" not in {n["Index Name"] for n in scans}, plan
        assert plan["Plan"]["Shared Hit Blocks"] + plan["Plan"].get("Shared Read Blocks", 0) < 60

    async def indexes() -> set[str]:
        engine = create_engine(fresh_settings)
        try:
            async with engine.connect() as conn:
                found = await conn.run_sync(lambda c: inspect(c).get_indexes("messages"))
                return {index["name"] for index in found}
        finally:
            await engine.dispose()

    names = asyncio.run(indexes())
    assert {"ix_messages_in_progress", "ix_messages_reply_to"} <= names
    assert "ix_messages_status_updated" not in names
    # The lookup of a deleted message's replies (its foreign key's ON DELETE SET NULL).
    answers = "UPDATE messages SET reply_to = NULL WHERE reply_to = 1999"
    plan = _plan(fresh_settings, [], [], answers)
    if isinstance(plan, str):
        assert "ix_messages_reply_to" in plan, plan
    else:
        scans = {n.get("Index Name") for n in _nodes(plan["Plan"])}
        assert "ix_messages_reply_to" in scans, plan


# The shapes of chat/repository.py's lookups of replies in progress: the claim, the heartbeat
# (the finish has its WHERE) and the sweeper's scan; none names reply_to.
_BY_ID = [
    "UPDATE messages SET status = 'generating' WHERE id = ANY('{2}'::bigint[]) "
    "AND status = 'queued' AND role = 'assistant'",
    "UPDATE messages SET updated_at = now() WHERE id = 2 AND status = 'generating' "
    "AND attempts = 1",
    "SELECT id FROM messages WHERE role = 'assistant' AND status IN ('queued', 'generating') "
    "AND updated_at < now()",
]


@pytest.mark.parametrize("revision", ["0016", "0017"])
def test_0017_no_lookup_by_id_can_read_the_live_reply_index(fresh_settings, revision):
    """The planner took `uq_messages_live_reply` for the lookups by id (a scan of the whole
    index, a heap row per entry) over the index on id whenever its statistics made them tie
    (bench/README.md: 10M rows). Here the other ways in are dropped (in a transaction rolled
    back) and sequential scans made prohibitive: at 0016 the planner takes the unique index;
    after 0017 it cannot."""
    if not fresh_settings.database_url.startswith("postgresql"):
        pytest.skip("a PostgreSQL planner's choice")
    command.upgrade(alembic_config(fresh_settings), revision)

    async def used_indexes() -> set[str]:
        conn = await asyncpg.connect(_asyncpg_dsn(fresh_settings.database_url))
        rollback = conn.transaction()
        await rollback.start()
        try:
            await conn.execute("DROP INDEX ix_messages_in_progress")
            await conn.execute("ALTER TABLE messages DROP CONSTRAINT pk_messages CASCADE")
            await conn.execute("SET LOCAL enable_seqscan = off")
            used: set[str] = set()
            for query in _BY_ID:
                plan = json.loads(await conn.fetchval(f"EXPLAIN (FORMAT JSON) {query}"))
                used |= {n.get("Index Name") for n in _nodes(plan[0]["Plan"])} - {None}
            return used
        finally:
            await rollback.rollback()
            await conn.close()

    used = asyncio.run(used_indexes())
    assert ("uq_messages_live_reply" in used) == (revision == "0016"), used
