"""The search of each database (`PostgresqlSearch`, `SqliteSearch`), chosen once by services.py.

Both rank the caller's completed messages and room names that match, best first, in pages by
the keyset (rank, kind, id) descending: kind 1 is a room name, 0 a message. An exact phrase of
every word of the query adds a bonus larger than any rank without it, so it comes first.

Snippets come from the database's highlighter (ts_headline, snippet()) with the marks of
marks.py; a hit's snippet is HTML, everything in it escaped but the `<mark>`s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import BigInteger, Float, Integer, String, bindparam, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.types import TypeEngine

from gemini_backend.core.db import UTCDateTime
from gemini_backend.search import marks
from gemini_backend.search.fts5 import to_fts5
from gemini_backend.search.marks import MARK_END, MARK_START

ROOM, MESSAGE = 1, 0
SNIPPET_WORDS = 24


@dataclass(frozen=True, slots=True)
class Keyset:
    """The last hit of the previous page (the first page: above everything)."""

    rank: float
    kind: int
    id: int


FIRST = Keyset(float("inf"), 2, 2**63 - 1)


@dataclass(frozen=True, slots=True)
class Hit:
    kind: int
    id: int
    room_id: int
    room_name: str
    role: str | None
    created_at: datetime
    rank: float
    snippet: str  # HTML: the matches in <mark>, everything else escaped


class Searcher(Protocol):
    """One database's search, chosen by services.py."""

    async def search(
        self, session: AsyncSession, *, user_id: int, query: str, after: Keyset, limit: int
    ) -> list[Hit]:
        """The caller's best hits after `after`, at most `limit`; `query` is the user's text."""

    async def check(self, connection: AsyncConnection) -> str | None:
        """Why the search cannot serve (None: it can): checked at start-up."""


_COLUMNS: dict[str, TypeEngine[Any]] = {
    "kind": Integer(),
    "id": BigInteger(),
    "room_id": BigInteger(),
    "room_name": String(),
    "role": String(),
    "created_at": UTCDateTime(),
    "rank": Float(),
}
_SELECTED = (
    "r.name AS room_name, m.role AS role, coalesce(m.created_at, r.created_at) AS created_at"
)


def _hit(row: Any, snippet: str) -> Hit:
    return Hit(
        kind=row.kind,
        id=row.id,
        room_id=row.room_id,
        room_name=row.room_name,
        role=row.role,
        created_at=row.created_at,
        rank=float(row.rank),
        snippet=snippet,
    )


def _keyset(after: Keyset) -> dict[str, Any]:
    return {"after_rank": after.rank, "after_kind": after.kind, "after_id": after.id}


# --- PostgreSQL -------------------------------------------------------------------------------

_PG_MARKS = f"StartSel={MARK_START}, StopSel={MARK_END}"
# A message: up to two fragments around the best matches. A room name: all of it.
_PG_MESSAGE_HEADLINE = (
    f'{_PG_MARKS}, MaxWords={SNIPPET_WORDS}, MinWords=8, MaxFragments=2, FragmentDelimiter=" … "'
)
_PG_ROOM_HEADLINE = f"{_PG_MARKS}, HighlightAll=true"
_PG_TEXT = "coalesce(m.content, r.name)"
for _old, _new in ((MARK_START, ""), (MARK_END, ""), ("&", "&amp;"), ("<", "&lt;"), (">", "&gt;")):
    _PG_TEXT = f"replace({_PG_TEXT}, '{_old}', '{_new}')"


def _pg_rank(vector: str) -> str:
    # Normalisation 1|32: by the log of the length, then into [0, 1), below the bonus of 1.
    return (
        f"ts_rank_cd({vector}, q.query, 33) + CASE WHEN numnode(q.phrase) > 1 "
        f"AND {vector} @@ q.phrase THEN 1 ELSE 0 END"
    )


# The caller's rooms first (ix_chatrooms_user_id), so the planner may read their messages
# (ix_messages_chatroom_id) rather than every user's matches in the GIN index, when fewer.
# S608: the statements are built from this module's constants; the user's text is bound.
_PG_SEARCH = text(
    f"""
WITH q AS MATERIALIZED (
    SELECT websearch_to_tsquery(CAST(:config AS regconfig), :query) AS query,
           phraseto_tsquery(CAST(:config AS regconfig), :query) AS phrase
), hits AS (
    SELECT {MESSAGE} AS kind, m.id AS id, m.chatroom_id AS room_id,
           {_pg_rank("m.search_vector")} AS rank
    FROM q, chatrooms r JOIN messages m ON m.chatroom_id = r.id
    WHERE r.user_id = :user_id AND m.search_vector @@ q.query
    UNION ALL
    SELECT {ROOM}, r.id, r.id, {_pg_rank("r.search_vector")}
    FROM q, chatrooms r
    WHERE r.user_id = :user_id AND r.search_vector @@ q.query
), page AS (
    SELECT kind, id, room_id, rank FROM hits
    WHERE (rank, kind, id) < (CAST(:after_rank AS double precision), :after_kind, :after_id)
    ORDER BY rank DESC, kind DESC, id DESC
    LIMIT :limit
)
SELECT p.kind AS kind, p.id AS id, p.room_id AS room_id, {_SELECTED}, p.rank AS rank,
       ts_headline(CAST(:config AS regconfig), {_PG_TEXT}, q.query,
                   CASE WHEN p.kind = {ROOM} THEN :room_options ELSE :options END) AS snippet
FROM page p CROSS JOIN q
JOIN chatrooms r ON r.id = p.room_id
LEFT JOIN messages m ON p.kind = {MESSAGE} AND m.id = p.id
ORDER BY p.rank DESC, p.kind DESC, p.id DESC
"""  # noqa: S608
).columns(**_COLUMNS, snippet=String())

# The configuration as PostgreSQL shows it (a schema-qualified name only when it is not on the
# search path), and the generated column's expression, which names it as a constant.
_PG_CONFIG_CHECK = text(
    """
SELECT (SELECT CAST(CAST(c.oid AS regconfig) AS text)
        FROM pg_ts_config c JOIN pg_namespace n ON n.oid = c.cfgnamespace
        WHERE c.cfgname = :name
          AND (n.nspname = :schema OR (:schema = '' AND pg_ts_config_is_visible(c.oid)))),
       pg_get_expr(d.adbin, d.adrelid)
FROM pg_attribute a
JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attrelid = CAST('messages' AS regclass) AND a.attname = 'search_vector'
"""
)


class PostgresqlSearch:
    """websearch_to_tsquery over the generated tsvector columns, ranked by ts_rank_cd."""

    def __init__(self, text_config: str) -> None:
        self.text_config = text_config  # the setting: a name, bound as a parameter

    async def search(
        self, session: AsyncSession, *, user_id: int, query: str, after: Keyset, limit: int
    ) -> list[Hit]:
        params = {
            "config": self.text_config,
            "query": query,
            "user_id": user_id,
            "limit": limit,
            "options": _PG_MESSAGE_HEADLINE,
            "room_options": _PG_ROOM_HEADLINE,
            **_keyset(after),
        }
        rows = (await session.execute(_PG_SEARCH, params)).all()
        return [_hit(row, marks.from_markup_escaped(row.snippet or "")) for row in rows]

    async def check(self, connection: AsyncConnection) -> str | None:
        name = self.text_config
        schema, _, bare = name.rpartition(".")
        found = await connection.execute(_PG_CONFIG_CHECK, {"name": bare, "schema": schema})
        row = found.one_or_none()
        if row is None:
            return "the search columns are missing: run `gemini-backend migrate`"
        shown, expression = row
        if shown is None:
            return f"SEARCH_TEXT_CONFIG {name!r} is not a text-search configuration here"
        if f"'{shown}'::regconfig" not in expression:
            return (
                f"the search columns were built with another configuration than {name!r}: "
                "rebuild them (docs/configuration.md, SEARCH_TEXT_CONFIG)"
            )
        return None


# --- SQLite ------------------------------------------------------------------------------------

# bm25() is lower for a better match; its negation plus the phrase's bonus is the rank.
_SQLITE_BONUS = (
    "CASE WHEN :phrase IS NOT NULL AND {table}.rowid IN "
    "(SELECT rowid FROM {table} WHERE {table} MATCH :phrase) THEN 1000.0 ELSE 0.0 END"
)
_SQLITE_SEARCH = text(
    f"""
WITH hits AS (
    SELECT {MESSAGE} AS kind, m.id AS id, m.chatroom_id AS room_id,
           -bm25(message_search) + {_SQLITE_BONUS.format(table="message_search")} AS rank
    FROM message_search
    JOIN messages m ON m.id = message_search.rowid
    JOIN chatrooms r ON r.id = m.chatroom_id
    WHERE message_search MATCH :match AND r.user_id = :user_id
    UNION ALL
    SELECT {ROOM}, r.id, r.id,
           -bm25(chatroom_search) + {_SQLITE_BONUS.format(table="chatroom_search")}
    FROM chatroom_search JOIN chatrooms r ON r.id = chatroom_search.rowid
    WHERE chatroom_search MATCH :match AND r.user_id = :user_id
)
SELECT h.kind AS kind, h.id AS id, h.room_id AS room_id, {_SELECTED}, h.rank AS rank
FROM hits h
JOIN chatrooms r ON r.id = h.room_id
LEFT JOIN messages m ON h.kind = {MESSAGE} AND m.id = h.id
WHERE (h.rank, h.kind, h.id) < (:after_rank, :after_kind, :after_id)
ORDER BY h.rank DESC, h.kind DESC, h.id DESC
LIMIT :limit
"""  # noqa: S608
).columns(**_COLUMNS)
# Only for the page's rows: snippet() runs for each row that passes the filter.
_SQLITE_SNIPPETS = {
    kind: text(
        f"SELECT rowid, snippet({table}, 0, :start, :end, '…', {SNIPPET_WORDS}) FROM {table} "  # noqa: S608
        f"WHERE {table} MATCH :match AND rowid IN :ids"
    ).bindparams(bindparam("ids", expanding=True))
    for kind, table in ((MESSAGE, "message_search"), (ROOM, "chatroom_search"))
}


class SqliteSearch:
    """FTS5 over the tables the triggers of migration 0015 keep, ranked by bm25()."""

    async def search(
        self, session: AsyncSession, *, user_id: int, query: str, after: Keyset, limit: int
    ) -> list[Hit]:
        native = to_fts5(query)
        if native is None:
            return []
        params = {"match": native.match, "phrase": native.phrase, "user_id": user_id}
        rows = (
            await session.execute(_SQLITE_SEARCH, {**params, **_keyset(after), "limit": limit})
        ).all()
        snippets: dict[int, dict[int, str]] = {}
        for kind in (MESSAGE, ROOM):
            ids = [row.id for row in rows if row.kind == kind]
            snippets[kind] = await self._snippets(session, kind, native.match, ids)
        return [_hit(row, marks.from_raw(snippets[row.kind].get(row.id, ""))) for row in rows]

    @staticmethod
    async def _snippets(
        session: AsyncSession, kind: int, match: str, ids: Sequence[int]
    ) -> dict[int, str]:
        if not ids:
            return {}
        params = {"start": MARK_START, "end": MARK_END, "match": match, "ids": list(ids)}
        rows = await session.execute(_SQLITE_SNIPPETS[kind], params)
        return {rowid: snippet for rowid, snippet in rows}

    async def check(self, connection: AsyncConnection) -> str | None:
        return None  # FTS5's tokenizer is fixed; SEARCH_TEXT_CONFIG is PostgreSQL's
