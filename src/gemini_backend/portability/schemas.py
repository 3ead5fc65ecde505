from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, StringConstraints

from gemini_backend.auth.schemas import OptionalOtpCode
from gemini_backend.chat.schemas import CHATROOM_EXAMPLE, ChatroomOut
from gemini_backend.core.db import MAX_ID

SHARE_ID_EXAMPLE = "q3Jk7V0cS2hHn1mB4xY8Zw"
SHARE_EXAMPLE: dict[str, Any] = {
    "share_id": SHARE_ID_EXAMPLE,
    "url": f"https://chat.example.com/s/{SHARE_ID_EXAMPLE}",
    "chatroom_id": 1,
    "message_id": 2,
    "name": "What is SSE?",
    "created_at": "2026-12-02T10:00:00Z",
}
SHARED_MESSAGE_EXAMPLE: dict[str, Any] = {
    "role": "user",
    "content": "What is SSE?",
    "parts": [{"type": "text", "text": "What is SSE?"}],
    "created_at": "2026-12-02T09:59:00Z",
}


class DeleteAccountIn(BaseModel):
    model_config = ConfigDict(
        populate_by_name=True,
        json_schema_extra={"example": {"current_password": "violet-harbour-42"}},
    )

    current_password: Annotated[
        str | None,
        Field(
            max_length=1024,
            validation_alias=AliasChoices("current_password", "password", "currentPassword"),
            description="The account's password.",
        ),
    ] = None
    otp: Annotated[
        OptionalOtpCode,
        Field(
            description="Instead of the password: a fresh sign-in code from POST /auth/send-otp."
        ),
    ] = None


class ShareCreate(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": {"message_id": 2}})

    message_id: Annotated[
        int | None,
        Field(
            ge=1,
            le=MAX_ID,
            description="The last message the link shows (default: the active leaf).",
        ),
    ] = None


class ShareOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": SHARE_EXAMPLE})

    share_id: str
    url: str = Field(description="The page that shows the snapshot (the web client).")
    chatroom_id: int
    message_id: int = Field(description="The last message shown.")
    name: str = Field(description="The room's name when the link was made.")
    created_at: datetime


class ShareList(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": {"shares": [SHARE_EXAMPLE]}})

    shares: list[ShareOut] = Field(description="Newest first.")


class SharedMessage(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": SHARED_MESSAGE_EXAMPLE})

    role: Literal["user", "assistant"]
    content: str
    parts: list[dict[str, Any]] = Field(
        description="As in a message, but an attachment part carries only `media_type` and "
        "`filename` (no id: the file itself is not shared)."
    )
    created_at: datetime


class SharedConversation(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "share_id": SHARE_ID_EXAMPLE,
                "name": "What is SSE?",
                "messages": [
                    SHARED_MESSAGE_EXAMPLE,
                    {
                        "role": "assistant",
                        "content": "Server-Sent Events: one HTTP response that stays open.",
                        "parts": [
                            {
                                "type": "text",
                                "text": "Server-Sent Events: one HTTP response that stays open.",
                            }
                        ],
                        "created_at": "2026-12-02T09:59:01Z",
                    },
                ],
                "created_at": "2026-12-02T10:00:00Z",
            }
        }
    )

    share_id: str
    name: str
    messages: list[SharedMessage] = Field(description="The path to the chosen message, in order.")
    created_at: datetime


ShareId = Annotated[str, StringConstraints(min_length=16, max_length=64, pattern=r"^[\w-]+$")]


class ImportedChatrooms(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": {"chatrooms": [CHATROOM_EXAMPLE]}})

    chatrooms: list[ChatroomOut] = Field(description="The rooms created, in the file's order.")
