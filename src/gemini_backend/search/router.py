"""`GET /search`: the caller's messages and room names, best match first."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from gemini_backend.auth.dependencies import CurrentUser
from gemini_backend.core.db import STORABLE_TEXT, DbSession
from gemini_backend.core.openapi import AUTH_ERRORS, error_doc_for, problem, validation_doc
from gemini_backend.search import service
from gemini_backend.search.schemas import SearchPage
from gemini_backend.search.service import (
    CURSOR_MAX_LENGTH,
    DEFAULT_LIMIT,
    MAX_LIMIT,
    MAX_QUERY_CHARS,
    InvalidSearchCursor,
)
from gemini_backend.services import services_of

router = APIRouter(tags=["Search"], responses=AUTH_ERRORS)

SearchText = Annotated[
    str,
    Query(
        min_length=1,
        max_length=MAX_QUERY_CHARS,
        pattern=STORABLE_TEXT,
        description='Words (all must match), "a quoted phrase", `or` between alternatives, '
        "`-word` to leave out what has it. Nothing in it is query syntax of the database.",
    ),
]


@router.get(
    "/search",
    summary="Search my messages and chatroom names",
    description=(
        "Full-text search over the caller's completed messages (every branch of every room) "
        "and room names, best match first; a message holding the words as one phrase ranks "
        "above one where they are scattered. `snippet` marks the matched words with "
        "`<mark>`…`</mark>` and escapes everything else as HTML. A room-name hit has "
        "`message_id` and `role` null. Cursor pagination: pass `next_cursor` as `cursor`; "
        f"`limit` 1..{MAX_LIMIT} (default {DEFAULT_LIMIT}). `q` is 1..{MAX_QUERY_CHARS} "
        "characters without U+0000 (else 422)."
    ),
    responses={
        **error_doc_for(("A cursor this server did not issue", InvalidSearchCursor)),
        422: validation_doc(
            example=problem(
                "string_too_long",
                ("query", "q"),
                f"String should have at most {MAX_QUERY_CHARS} characters",
                max_length=str(MAX_QUERY_CHARS),
            )
        ),
    },
)
async def search(
    request: Request,
    user: CurrentUser,
    session: DbSession,
    q: SearchText,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query(max_length=CURSOR_MAX_LENGTH)] = None,
) -> SearchPage:
    return await service.search(
        session,
        services_of(request).search,
        user_id=user.id,
        query=q,
        limit=limit,
        cursor=cursor,
    )
