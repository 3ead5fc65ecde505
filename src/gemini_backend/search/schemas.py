from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

RESULT_EXAMPLE: dict[str, Any] = {
    "chatroom_id": 12,
    "chatroom_name": "Trip to Lisbon",
    "message_id": 345,
    "role": "assistant",
    "snippet": "the <mark>tram</mark> 28 runs through Alfama &amp; Graça",
    "created_at": "2026-11-22T10:00:00Z",
}


class SearchResult(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": RESULT_EXAMPLE})

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
    model_config = ConfigDict(
        json_schema_extra={
            "example": {"results": [RESULT_EXAMPLE], "next_cursor": "WzAuMjUsIDAsIDM0NV0"}
        }
    )

    results: list[SearchResult]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null: last")
