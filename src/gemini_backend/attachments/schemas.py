from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from gemini_backend.attachments.models import Attachment

ATTACHMENT_EXAMPLE: dict[str, Any] = {
    "id": 7,
    "chatroom_id": 12,
    "filename": "photo.png",
    "media_type": "image/png",
    "size": 48213,
    "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "created_at": "2026-11-22T10:00:00Z",
}


class AttachmentOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": ATTACHMENT_EXAMPLE})

    id: int
    chatroom_id: int
    filename: str
    media_type: str = Field(description="Sniffed from the bytes, never taken from the client.")
    size: int = Field(description="Bytes.")
    sha256: str = Field(description="Hex digest of the bytes.")
    created_at: datetime

    @classmethod
    def from_row(cls, row: Attachment) -> AttachmentOut:
        return cls(
            id=row.id,
            chatroom_id=row.chatroom_id,
            filename=row.filename,
            media_type=row.media_type,
            size=row.size,
            sha256=row.sha256,
            created_at=row.created_at,
        )


def attachment_part(row: Attachment) -> dict[str, Any]:
    """The attachment as a part of its message."""
    return {
        "type": "attachment",
        "attachment_id": row.id,
        "media_type": row.media_type,
        "filename": row.filename,
    }
