"""The search index's objects, which migration 0015 creates outside the ORM models: a generated
column and a GIN index per table on PostgreSQL, FTS5 tables (and their shadow tables) and
triggers on SQLite. Alembic's comparison with the models leaves them out (`is_search_object`)."""

from __future__ import annotations

SEARCH_COLUMN = "search_vector"
SEARCH_INDEXES = frozenset({"ix_messages_search", "ix_chatrooms_search"})
FTS_TABLES = ("message_search", "chatroom_search")
# FTS5 keeps each virtual table's data in these tables of its own.
_FTS_SHADOWS = ("data", "idx", "content", "docsize", "config")
SEARCH_TABLES = frozenset(
    {*FTS_TABLES, *(f"{table}_{shadow}" for table in FTS_TABLES for shadow in _FTS_SHADOWS)}
)
SQLITE_TRIGGERS = frozenset(
    f"{table}_search_{event}"
    for table in ("message", "chatroom")
    for event in ("insert", "update", "delete")
)


def is_search_object(name: str | None, type_: str) -> bool:
    """Whether a reflected table, column or index belongs to the search index."""
    if type_ == "table":
        return name in SEARCH_TABLES
    if type_ == "column":
        return name == SEARCH_COLUMN
    if type_ == "index":
        return name in SEARCH_INDEXES
    return False
