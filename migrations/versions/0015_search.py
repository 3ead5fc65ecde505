"""full-text search over messages and room names

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-02

PostgreSQL: a stored generated `tsvector` on messages (completed ones only) and on room names,
each with a GIN index, in the text-search configuration SEARCH_TEXT_CONFIG. SQLite: two FTS5
tables kept in step by triggers. Existing rows are indexed here: the generated columns are
computed as they are added, and the FTS5 tables are filled from the tables.
"""

import re
from collections.abc import Sequence

from alembic import context, op

from gemini_backend.config import Settings

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The snippet's mark sentinels (search/repository.py): private-use characters, removed from the
# text before it is highlighted, so that every one in a snippet is a mark.
_STRIP = "replace(replace({}, char(57344), ''), char(57345), '')"
_CONFIG = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?")


def _text_config() -> str:
    given = context.config.attributes.get("settings")
    settings = given if isinstance(given, Settings) else Settings()
    name = settings.search_text_config
    if not _CONFIG.fullmatch(name):  # the setting's own pattern; checked again before DDL
        raise ValueError(f"SEARCH_TEXT_CONFIG {name!r} is not a configuration name")
    return name


def _upgrade_postgresql() -> None:
    config = _text_config()
    op.execute(
        "ALTER TABLE messages ADD COLUMN search_vector tsvector GENERATED ALWAYS AS "
        f"(CASE WHEN status = 'completed' THEN to_tsvector('{config}'::regconfig, content) END) "
        "STORED"
    )
    op.execute("CREATE INDEX ix_messages_search ON messages USING gin (search_vector)")
    op.execute(
        "ALTER TABLE chatrooms ADD COLUMN search_vector tsvector GENERATED ALWAYS AS "
        f"(to_tsvector('{config}'::regconfig, name)) STORED"
    )
    op.execute("CREATE INDEX ix_chatrooms_search ON chatrooms USING gin (search_vector)")


# Every statement is built from this module's constants (S608: nothing comes from a request).
_SQLITE_UP = [
    "CREATE VIRTUAL TABLE message_search USING fts5(content)",
    "CREATE VIRTUAL TABLE chatroom_search USING fts5(name)",
    # Only completed messages are searchable: a reply enters when it completes (the worker's
    # finish writes its content and status in one UPDATE).
    "CREATE TRIGGER message_search_insert AFTER INSERT ON messages "  # noqa: S608
    "WHEN new.status = 'completed' BEGIN "
    f"INSERT INTO message_search (rowid, content) VALUES (new.id, {_STRIP.format('new.content')}); "
    "END",
    "CREATE TRIGGER message_search_update AFTER UPDATE OF content, status ON messages "  # noqa: S608
    "WHEN old.status = 'completed' OR new.status = 'completed' BEGIN "
    "DELETE FROM message_search WHERE rowid = old.id; "
    f"INSERT INTO message_search (rowid, content) SELECT new.id, {_STRIP.format('new.content')} "
    "WHERE new.status = 'completed'; "
    "END",
    # Also fired by the cascade of a room's delete.
    "CREATE TRIGGER message_search_delete AFTER DELETE ON messages "
    "WHEN old.status = 'completed' BEGIN "
    "DELETE FROM message_search WHERE rowid = old.id; "
    "END",
    "CREATE TRIGGER chatroom_search_insert AFTER INSERT ON chatrooms BEGIN "  # noqa: S608
    f"INSERT INTO chatroom_search (rowid, name) VALUES (new.id, {_STRIP.format('new.name')}); "
    "END",
    "CREATE TRIGGER chatroom_search_update AFTER UPDATE OF name ON chatrooms BEGIN "  # noqa: S608
    "DELETE FROM chatroom_search WHERE rowid = old.id; "
    f"INSERT INTO chatroom_search (rowid, name) VALUES (new.id, {_STRIP.format('new.name')}); "
    "END",
    "CREATE TRIGGER chatroom_search_delete AFTER DELETE ON chatrooms BEGIN "
    "DELETE FROM chatroom_search WHERE rowid = old.id; "
    "END",
    "INSERT INTO message_search (rowid, content) "  # noqa: S608
    f"SELECT id, {_STRIP.format('content')} FROM messages WHERE status = 'completed'",
    "INSERT INTO chatroom_search (rowid, name) "  # noqa: S608
    f"SELECT id, {_STRIP.format('name')} FROM chatrooms",
]
_SQLITE_TRIGGERS = [
    f"{table}_search_{event}"
    for table in ("message", "chatroom")
    for event in ("insert", "update", "delete")
]


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _upgrade_postgresql()
        return
    for statement in _SQLITE_UP:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in ("chatrooms", "messages"):
            op.execute(f"DROP INDEX IF EXISTS ix_{table}_search")
            op.execute(f"ALTER TABLE {table} DROP COLUMN IF EXISTS search_vector")
        return
    for trigger in _SQLITE_TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    for table in ("message_search", "chatroom_search"):
        op.execute(f"DROP TABLE IF EXISTS {table}")
