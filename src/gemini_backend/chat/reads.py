"""The request rules of the two cached reads, `GET /chatroom` and `GET /chatroom/{id}`, and the
key a list page is cached under: written once, for the routes (chat/router.py declares its
parameters with them and stores under `page_key`) and for the fast path (chat/fastpath.py reads
the raw request by them before routing). tests/chat/test_cached_reads.py checks the two agree.

The fast path only takes the plain forms: a limit in plain decimal within the bounds, a cursor
of the characters `encode_room_cursor` issues (URL-safe base64, unpadded), each at most once, and
nothing else. Any other request goes to the route, which parses (or refuses) it as FastAPI does.
"""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import Path, Query

from gemini_backend.core.db import MAX_ID

DEFAULT_LIMIT = 20
MIN_LIMIT = 1
MAX_LIMIT = 100
CURSOR_MAX_LENGTH = 200
MIN_ID = 1

PageLimit = Annotated[int, Query(ge=MIN_LIMIT, le=MAX_LIMIT)]
PageCursor = Annotated[str | None, Query(max_length=CURSOR_MAX_LENGTH)]
ChatroomId = Annotated[int, Path(ge=MIN_ID, le=MAX_ID, description="Chatroom id")]


def page_key(limit: int, cursor: str | None) -> str:
    """The key of a page of the list in the chatroom cache."""
    return f"{limit}:{cursor or ''}"


_LIMIT = re.compile(rf"[1-9][0-9]{{0,{len(str(MAX_LIMIT)) - 1}}}".encode())
_CURSOR = re.compile(rf"[A-Za-z0-9_-]{{1,{CURSOR_MAX_LENGTH}}}".encode())
_ID = re.compile(rf"[1-9][0-9]{{0,{len(str(MAX_ID)) - 1}}}")
_DEFAULT_PAGE = page_key(DEFAULT_LIMIT, None)


def page_key_of_query(query: bytes) -> str | None:
    """The key the list route uses for this raw query string, or None for a form the fast path
    leaves to the route."""
    if not query:
        return _DEFAULT_PAGE
    limit: int | None = None
    cursor: str | None = None
    for part in query.split(b"&"):
        name, _, value = part.partition(b"=")
        if name == b"limit" and limit is None and _LIMIT.fullmatch(value):
            limit = int(value)
            if not MIN_LIMIT <= limit <= MAX_LIMIT:
                return None
        elif name == b"cursor" and cursor is None and _CURSOR.fullmatch(value):
            cursor = value.decode()
        else:
            return None
    return page_key(DEFAULT_LIMIT if limit is None else limit, cursor)


def room_id_of(text: str) -> int | None:
    """The chatroom id of a path segment the room route accepts as written, or None."""
    if _ID.fullmatch(text):
        room_id = int(text)
        if MIN_ID <= room_id <= MAX_ID:
            return room_id
    return None
