"""Searching the caller's messages and room names: the query's bounds and the opaque cursor;
the statements and the snippets are the database's (repository.py)."""

from __future__ import annotations

import base64
import binascii
import json
import math
from typing import Literal, cast

from sqlalchemy.ext.asyncio import AsyncSession

from gemini_backend.core.db import MAX_ID
from gemini_backend.core.errors import BadRequest
from gemini_backend.search.repository import (
    FIRST,
    MESSAGE,
    ROOM,
    Hit,
    Keyset,
    Searcher,
)
from gemini_backend.search.schemas import SearchPage, SearchResult

DEFAULT_LIMIT = 20
MAX_LIMIT = 50
MAX_QUERY_CHARS = 500
CURSOR_MAX_LENGTH = 200


class InvalidSearchCursor(BadRequest):
    code = "invalid_cursor"
    detail = "The cursor is not one this server issued."


def encode_cursor(hit: Hit) -> str:
    raw = json.dumps([hit.rank, hit.kind, hit.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> Keyset:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        rank, kind, id_ = json.loads(raw)
        if type(rank) not in (int, float) or type(kind) is not int or type(id_) is not int:
            raise TypeError
        keyset = Keyset(float(rank), kind, id_)
    except (ValueError, TypeError, OverflowError, binascii.Error) as exc:
        raise InvalidSearchCursor() from exc
    if (
        not math.isfinite(keyset.rank)
        or keyset.kind not in (MESSAGE, ROOM)
        or not 1 <= keyset.id <= MAX_ID  # beyond it PostgreSQL refuses the parameter
    ):
        raise InvalidSearchCursor()
    return keyset


def _result(hit: Hit) -> SearchResult:
    is_message = hit.kind == MESSAGE
    return SearchResult(
        chatroom_id=hit.room_id,
        chatroom_name=hit.room_name,
        message_id=hit.id if is_message else None,
        role=cast(Literal["user", "assistant"], hit.role) if is_message else None,
        snippet=hit.snippet,
        created_at=hit.created_at,
    )


async def search(
    session: AsyncSession,
    searcher: Searcher,
    *,
    user_id: int,
    query: str,
    limit: int,
    cursor: str | None,
) -> SearchPage:
    after = decode_cursor(cursor) if cursor else FIRST
    hits = await searcher.search(
        session, user_id=user_id, query=query, after=after, limit=limit + 1
    )
    more = len(hits) > limit
    hits = hits[:limit]
    return SearchPage(
        results=[_result(hit) for hit in hits],
        next_cursor=encode_cursor(hits[-1]) if more else None,
    )
