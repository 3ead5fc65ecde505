"""Dialect-specific statements the domains share (both dialects speak ON CONFLICT)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Delete, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession


def insert_for(session: AsyncSession, table: Any) -> Any:
    """An INSERT with `.on_conflict_do_update/do_nothing` for the session's database."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def violates_unique(exc: IntegrityError, index: str, columns: str) -> bool:
    """Whether `exc` is a duplicate in the unique index `index` on `columns` ("table.column"):
    PostgreSQL names the index, SQLite the columns."""
    message = str(exc.orig)
    return f'"{index}"' in message or f"UNIQUE constraint failed: {columns}" in message


def bounded_delete(table: Any, key: Any, *where: ColumnElement[bool], limit: int) -> Delete:
    """DELETE of at most `limit` rows matching `where`, picked by their key in a subquery (both
    databases), so a purge of many rows is many short transactions, never one long lock.

    `where` is checked again on the rows themselves: a row updated while the DELETE waited for
    its lock (a code sent again, a guard locked) is re-read by PostgreSQL and kept."""
    return delete(table).where(key.in_(select(key).where(*where).limit(limit)), *where)
