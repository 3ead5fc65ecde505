from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field


class SearchResult(BaseModel):
    chatroom_id: int
    chatroom_name: str
    message_id: int | None = Field(
        description="The message that matched; null when the room's name matched"
    )
    role: Literal["user", "assistant"] | None = Field(
        description="The message's role; null when the room's name matched"
    )
    snippet: str = Field(
        description="The matched text around the match: the matched words in <mark>…</mark>, "
        "everything else HTML-escaped"
    )
    created_at: datetime = Field(description="When the message (or the room) was created")


class SearchPage(BaseModel):
    results: list[SearchResult]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null: last")
