"""Database engine, declarative base and the per-request session (the request owns the transaction).

SQLite (embedded mode) runs in WAL mode with foreign keys on, and every transaction starts with
`BEGIN IMMEDIATE`: concurrent read-then-write transactions would otherwise fail with
"database is locked" instead of waiting for each other.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import structlog
from fastapi import Depends, Request
from sqlalchemy import BigInteger, DateTime, Dialect, Integer, MetaData, event, text
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator

from gemini_backend.config import Settings
from gemini_backend.core.errors import AppError

log = structlog.get_logger(__name__)

# The `pattern` of every free-text field a request stores: PostgreSQL's text cannot hold U+0000
# (asyncpg fails with "invalid byte sequence"), so it is refused as a 422 in both modes.
STORABLE_TEXT = r"^[^\x00]*$"

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Integer ids: BIGINT on PostgreSQL; INTEGER on SQLite, where only that type is the rowid alias.
BigIntId = BigInteger().with_variant(Integer(), "sqlite")
MAX_ID = 2**63 - 1  # the largest id a BIGINT (and SQLite's INTEGER) holds


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both databases (SQLite stores them naive, in UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def create_engine(settings: Settings, *, foreign_keys: bool = True) -> AsyncEngine:
    """On PostgreSQL a connection is checked as it leaves the pool without a round trip: one
    whose socket the server closed (a restart, a terminated backend) is replaced before use
    (`_replace_closed_connections`). SQLAlchemy's `pool_pre_ping` would cost three round trips
    per checkout on asyncpg (BEGIN, a no-op, ROLLBACK). A server that goes silent without
    closing anything is caught by DB_COMMAND_TIMEOUT_SECONDS either way.

    `foreign_keys=False` (SQLite, the migrations): a batch migration rebuilds a table by
    dropping the old one, and with foreign keys enforced that drop would cascade into (or null)
    the rows that point at it; the migrations check the keys themselves afterwards."""
    url = settings.resolved_database_url
    if url.startswith("sqlite"):
        if ":memory:" not in url:
            _create_private_file(Path(url.split("///", 1)[1]))
        # SQLite has one writer, and every transaction here begins IMMEDIATE. One pooled
        # connection makes concurrent requests queue in the pool, first come first served,
        # instead of in SQLite's busy handler, which sleeps and retries (measured: 3x the
        # throughput under 300 concurrent requests). No request ever needs two connections.
        engine = create_async_engine(
            url,
            connect_args={"timeout": 30},
            pool_size=1,
            max_overflow=0,
            pool_timeout=settings.db_pool_timeout_seconds,
        )
        _configure_sqlite(engine, foreign_keys)
        return engine
    kwargs: dict[str, Any] = {
        "pool_size": settings.db_pool_size,
        "max_overflow": settings.db_max_overflow,
        "pool_timeout": settings.db_pool_timeout_seconds,
    }
    asyncpg = url.startswith("postgresql+asyncpg")
    if asyncpg:
        kwargs["connect_args"] = {
            "server_settings": {"application_name": "gemini-backend"},
            "timeout": settings.db_connect_timeout_seconds,
            "command_timeout": settings.db_command_timeout_seconds,
        }
    engine = create_async_engine(url, **kwargs)
    if asyncpg:
        _replace_closed_connections(engine)
    return engine


def _replace_closed_connections(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "checkout")
    def _on_checkout(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        # asyncpg notices the server closing the socket as soon as the event loop reads the
        # EOF, so a pooled connection killed by a restart is known closed when it is checked
        # out. Raising DisconnectionError makes the pool discard it and connect anew.
        if dbapi_connection.driver_connection.is_closed():
            raise DisconnectionError("the server closed this pooled connection")


def _create_private_file(path: Path) -> None:
    """The SQLite file (and its directory) readable by this user only, if it does not exist
    yet: it holds password hashes and session digests. SQLite gives its -wal and -shm files
    the database file's mode."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _configure_sqlite(engine: AsyncEngine, foreign_keys: bool) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from the driver so that BEGIN IMMEDIATE can be issued.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


class Database:
    """The engine and session factory of one process, owned by the app's lifespan."""

    def __init__(self, settings: Settings) -> None:
        self.engine = create_engine(settings)
        self.sessionmaker = async_sessionmaker(self.engine, expire_on_commit=False)
        # On PostgreSQL, autocommit: each statement is its own transaction, which saves the
        # BEGIN and COMMIT round trips. For reads (GET/HEAD requests) and for a write that is one
        # statement (a reply's claim or finish); callers still call commit(), which ends the
        # transaction on SQLite (one connection, BEGIN IMMEDIATE for everything).
        self.autocommit_engine = (
            self.engine.execution_options(isolation_level="AUTOCOMMIT")
            if self.engine.dialect.name == "postgresql"
            else self.engine
        )
        self.autocommit_sessionmaker = (
            async_sessionmaker(self.autocommit_engine, expire_on_commit=False)
            if self.autocommit_engine is not self.engine
            else self.sessionmaker
        )

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        await self.engine.dispose()


_READ_METHODS = frozenset({"GET", "HEAD"})


async def _request_session(request: Request) -> AsyncIterator[AsyncSession]:
    """One session per request; committed after the route returns, before the response is sent.
    GET and HEAD routes only read (a rule of this code base): on PostgreSQL their session runs
    in autocommit, without BEGIN/COMMIT round trips.

    A domain error marked `keeps_changes` (a failed login attempt that must be counted) commits
    what was written before it; any other error rolls back.
    """
    database: Database = request.app.state.services.database  # services.Services
    reads_only = request.method in _READ_METHODS
    factory = database.autocommit_sessionmaker if reads_only else database.sessionmaker
    async with factory() as session:
        try:
            yield session
        except AppError as exc:
            if exc.keeps_changes:
                await _commit(session)
            else:
                await session.rollback()
            raise
        except BaseException:
            await session.rollback()
            raise
        else:
            await _commit(session)


AfterCommit = Callable[[], Awaitable[None]]
_AFTER_COMMIT_KEY = "after_commit"


def after_commit(session: AsyncSession, action: AfterCommit) -> None:
    """Run `action` once the request's transaction has committed (never if it rolls back).

    For effects outside the database that must not happen for a rolled-back write: enqueuing a
    job, invalidating a cache entry. They run before the response is sent.
    """
    session.info.setdefault(_AFTER_COMMIT_KEY, []).append(action)


async def _commit(session: AsyncSession) -> None:
    await session.commit()
    await run_after_commit(session.info.pop(_AFTER_COMMIT_KEY, []))


async def run_after_commit(actions: list[AfterCommit]) -> None:
    """Run the actions of a committed write in order; one that fails is logged, not raised."""
    for action in actions:
        try:
            await action()
        except Exception:
            # The write stands; a failed side effect is logged, not turned into an error reply.
            log.exception("after_commit_failed", action=getattr(action, "__qualname__", "?"))


DbSession = Annotated[AsyncSession, Depends(_request_session, scope="function")]


async def release_connection(session: AsyncSession) -> None:
    """End a transaction that has only read, returning its connection to the pool.

    Called before slow CPU work (password hashing) so a request never holds a pooled
    connection, or SQLite's write lock, while it waits for a hashing thread. Loaded objects stay
    usable (`expire_on_commit=False`); the next statement starts a new transaction.
    """
    await session.commit()


async def commit_now(session: AsyncSession) -> None:
    """Commit what the request has written so far, so that concurrent requests see it before
    this one goes on (a sign-in attempt counted before its secret is checked). After-commit
    actions still wait for the end of the request."""
    await session.commit()
