from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    StrictBool,
    StrictInt,
    StringConstraints,
    model_validator,
)
from sqlalchemy import Row

from gemini_backend.chat.models import Message, RoomView
from gemini_backend.chat.options import MAX_THINKING_BUDGET, thinking_value
from gemini_backend.chat.states import ReplyStatus
from gemini_backend.core.db import MAX_ID, STORABLE_TEXT

RoomName = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200, pattern=STORABLE_TEXT),
]
# At most MAX_SYSTEM_PROMPT_CHARS after trimming (a setting: checked by the service).
SystemPrompt = Annotated[str, StringConstraints(strip_whitespace=True, pattern=STORABLE_TEXT)]
# A room's generation options (checked against the model and the plan by chat/options.py).
ModelId = Annotated[str, StringConstraints(min_length=1, max_length=100)]
Temperature = Annotated[float, Strict(), Field(ge=0, le=2, allow_inf_nan=False)]
ThinkingLevel = Literal["off", "low", "medium", "high"]
Thinking = ThinkingLevel | Annotated[StrictInt, Field(ge=0, le=MAX_THINKING_BUDGET)]
MODEL_DOC = "A model of `GET /models` (null: the default model)."
TEMPERATURE_DOC = "0 to 2 (null: the model's default)."
THINKING_DOC = (
    '"off", "low", "medium", "high", or a thinking budget in tokens (0 to 32768); null: the '
    "model's default. Only on models that support `thinking`."
)
GROUNDING_DOC = "Google Search grounding: Pro only, on models that support `search`."

# Realistic values shared by the examples of the OpenAPI schema: one exchange in chatroom 12.
PROMPT_EXAMPLE = "Plan a 3-day trip to Goa in December."
USER_MESSAGE_EXAMPLE: dict[str, Any] = {
    "id": 41,
    "chatroom_id": 12,
    "role": "user",
    "content": PROMPT_EXAMPLE,
    "status": "completed",
    "error": None,
    "finish_reason": None,
    "usage": {
        "prompt_tokens": None,
        "output_tokens": None,
        "thinking_tokens": None,
        "cached_tokens": None,
    },
    "model": None,
    "reply_to": None,
    "parent_id": 40,
    "sibling_ids": [41],
    "parts": [{"type": "text", "text": PROMPT_EXAMPLE}],
    "created_at": "2026-11-22T10:00:00Z",
    "completed_at": "2026-11-22T10:00:00Z",
}
REPLY_TEXT_EXAMPLE = f'Demo reply (context: 2 earlier messages [39, 40]) to: "{PROMPT_EXAMPLE}"'
REPLY_EXAMPLE: dict[str, Any] = {
    "id": 42,
    "chatroom_id": 12,
    "role": "assistant",
    "content": REPLY_TEXT_EXAMPLE,
    "status": "completed",
    "error": None,
    "finish_reason": "stop",
    "usage": {"prompt_tokens": 12, "output_tokens": 18, "thinking_tokens": 0, "cached_tokens": 0},
    "model": "demo",
    "reply_to": 41,
    "parent_id": 41,
    "sibling_ids": [42],
    "parts": [{"type": "text", "text": REPLY_TEXT_EXAMPLE}],
    "created_at": "2026-11-22T10:00:00Z",
    "completed_at": "2026-11-22T10:00:02Z",
}
QUEUED_REPLY_EXAMPLE: dict[str, Any] = {
    **REPLY_EXAMPLE,
    "content": "",
    "status": "queued",
    "finish_reason": None,
    "usage": {
        "prompt_tokens": None,
        "output_tokens": None,
        "thinking_tokens": None,
        "cached_tokens": None,
    },
    "model": None,
    "parts": [],
    "completed_at": None,
}
CHATROOM_EXAMPLE: dict[str, Any] = {
    "id": 12,
    "name": "Goa trip",
    "title": "Goa trip",
    "system_prompt": "You are a concise travel planner.",
    "message_count": 2,
    "last_message_at": "2026-11-22T10:00:00Z",
    "model": None,
    "temperature": None,
    "thinking": None,
    "grounding": False,
    "created_at": "2026-11-21T18:30:00Z",
    "updated_at": "2026-11-22T10:00:02Z",
}


class ChatroomCreate(BaseModel):
    model_config = ConfigDict(
        populate_by_name=True,
        json_schema_extra={
            "example": {"name": "Goa trip", "system_prompt": "You are a concise travel planner."}
        },
    )

    name: Annotated[
        RoomName | None,
        Field(
            validation_alias=AliasChoices("name", "title"),
            description='Omit to get "New chat" until the first exchange gives a title.',
        ),
    ] = None
    system_prompt: SystemPrompt | None = None
    model: Annotated[ModelId | None, Field(description=MODEL_DOC)] = None
    temperature: Annotated[Temperature | None, Field(description=TEMPERATURE_DOC)] = None
    thinking: Annotated[Thinking | None, Field(description=THINKING_DOC)] = None
    grounding: Annotated[StrictBool, Field(description=GROUNDING_DOC)] = False


class ChatroomUpdate(BaseModel):
    model_config = ConfigDict(
        populate_by_name=True,
        json_schema_extra={
            "example": {"name": "Goa itinerary", "model": "gemini-2.5-flash", "temperature": 0.7}
        },
    )

    name: Annotated[RoomName | None, Field(validation_alias=AliasChoices("name", "title"))] = None
    system_prompt: Annotated[
        SystemPrompt | None, Field(description="An empty string or null clears it.")
    ] = None
    model: Annotated[ModelId | None, Field(description=MODEL_DOC)] = None
    temperature: Annotated[Temperature | None, Field(description=TEMPERATURE_DOC)] = None
    thinking: Annotated[Thinking | None, Field(description=THINKING_DOC)] = None
    grounding: Annotated[StrictBool, Field(description=GROUNDING_DOC)] = False


class Usage(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": REPLY_EXAMPLE["usage"]})

    prompt_tokens: int | None
    output_tokens: int | None
    thinking_tokens: int | None
    cached_tokens: int | None = Field(
        description="Of the prompt tokens, those the provider read from its cache (null: not "
        "reported)."
    )


class MessageOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": REPLY_EXAMPLE})

    id: int
    chatroom_id: int
    role: Literal["user", "assistant"]
    content: str
    status: str = Field(description=", ".join(ReplyStatus))
    error: str | None
    finish_reason: str | None
    usage: Usage
    model: str | None
    reply_to: int | None
    parent_id: int | None = Field(
        description="The message this one follows in the conversation tree (null: a root)."
    )
    sibling_ids: list[int] = Field(
        description="The versions at this point: the messages with the same parent, oldest "
        "first, this one included (`< 2/3 >`)."
    )
    parts: list[dict[str, Any]] = Field(
        description='The message as parts, in order. A user message: `{"type": "text", "text"}` '
        '(absent when it is only files) and `{"type": "attachment", "attachment_id", '
        '"media_type", "filename"}` for each file sent with it. A reply: `{"type": "thought", '
        '"text"}` (the model\'s thought summary, never in `content`), `{"type": "text", "text"}` '
        '(absent while a reply has no text yet), `{"type": "citation", "sources", "segments", '
        '"search_entry_point"}` (a grounded reply\'s sources). `content` is the text alone.'
    )
    created_at: datetime
    completed_at: datetime | None

    @classmethod
    def from_row(cls, m: Message | Row[Any], sibling_ids: list[int] | None = None) -> MessageOut:
        """From an ORM message or a row of the messages table; `sibling_ids` default to the
        message alone."""
        return cls(
            id=m.id,
            chatroom_id=m.chatroom_id,
            role="user" if m.role == "user" else "assistant",
            content=m.content,
            status=m.status,
            error=m.error,
            finish_reason=m.finish_reason,
            usage=Usage(
                prompt_tokens=m.prompt_tokens,
                output_tokens=m.output_tokens,
                thinking_tokens=m.thinking_tokens,
                cached_tokens=m.cached_tokens,
            ),
            model=m.model,
            reply_to=m.reply_to,
            parent_id=m.parent_id,
            sibling_ids=sibling_ids or [m.id],
            parts=message_parts(m.content, m.parts),
            created_at=m.created_at,
            completed_at=m.completed_at,
        )


def message_parts(content: str, stored: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """A message's parts: those stored, or its text as the one part."""
    if stored is not None:
        return stored
    return [{"type": "text", "text": content}] if content else []


class ChatroomOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": CHATROOM_EXAMPLE})

    id: int
    name: str
    title: str = Field(description="Same as name.")
    system_prompt: str | None
    message_count: int
    last_message_at: datetime | None
    model: str | None = Field(description=MODEL_DOC)
    temperature: float | None = Field(description=TEMPERATURE_DOC)
    thinking: ThinkingLevel | int | None = Field(description=THINKING_DOC)
    grounding: bool = Field(description=GROUNDING_DOC)
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, room: RoomView) -> ChatroomOut:
        return cls(
            id=room.id,
            name=room.name,
            title=room.name,
            system_prompt=room.system_prompt,
            message_count=room.message_count,
            last_message_at=room.last_message_at,
            model=room.model,
            temperature=room.temperature,
            thinking=thinking_value(room.thinking),
            grounding=room.grounding,
            created_at=room.created_at,
            updated_at=room.updated_at,
        )


class ChatroomDetail(ChatroomOut):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                **CHATROOM_EXAMPLE,
                "active_leaf_id": 42,
                "messages": [USER_MESSAGE_EXAMPLE, REPLY_EXAMPLE],
            }
        }
    )

    active_leaf_id: int | None = Field(
        description="The last message of the branch shown (null: no messages yet)."
    )
    messages: list[MessageOut] = Field(
        description="The latest 50 messages of the active branch (the path from the first "
        "message to `active_leaf_id`), oldest first."
    )


class ChatroomTree(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {"messages": [USER_MESSAGE_EXAMPLE, REPLY_EXAMPLE], "active_leaf_id": 42}
        }
    )

    messages: list[MessageOut] = Field(description="Every message of the chatroom, oldest first.")
    active_leaf_id: int | None


class ChatroomPage(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "chatrooms": [CHATROOM_EXAMPLE],
                "next_cursor": "WyIyMDI2LTExLTIyVDEwOjAwOjAyKzAwOjAwIiwgMTJd",
            }
        }
    )

    chatrooms: list[ChatroomOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page.")


class MessagePage(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {"messages": [USER_MESSAGE_EXAMPLE, REPLY_EXAMPLE], "next_cursor": "41"}
        }
    )

    messages: list[MessageOut] = Field(description="Oldest first.")
    next_cursor: str | None = Field(description="Pass as `before` for older messages.")


MessageId = Annotated[int, Field(ge=1, le=MAX_ID)]
MessageContent = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, pattern=STORABLE_TEXT)
]
MessageText = Annotated[str, StringConstraints(strip_whitespace=True, pattern=STORABLE_TEXT)]


class MessageCreate(BaseModel):
    model_config = ConfigDict(
        populate_by_name=True, json_schema_extra={"example": {"content": PROMPT_EXAMPLE}}
    )

    content: Annotated[
        MessageText,
        Field(
            validation_alias=AliasChoices("content", "message", "text", "user_message"),
            description="1..MAX_MESSAGE_CHARS characters after trimming; may be empty or left "
            "out when `attachment_ids` are given.",
        ),
    ] = ""
    attachment_ids: Annotated[
        list[MessageId],
        Field(
            description="Attachments of this chatroom (uploaded, not sent with another "
            "message yet) sent with the message, in this order; at most "
            "MAX_ATTACHMENTS_PER_MESSAGE (10).",
            max_length=100,
        ),
    ] = []
    parent_id: Annotated[
        MessageId | None,
        Field(
            description="The message this one follows (any message of the chatroom); omit to "
            "continue the active branch."
        ),
    ] = None

    @model_validator(mode="after")
    def _something_to_send(self) -> MessageCreate:
        if not self.content and not self.attachment_ids:
            raise ValueError("content is required (unless attachment_ids are given)")
        return self


class MessageEdit(BaseModel):
    model_config = ConfigDict(
        populate_by_name=True, json_schema_extra={"example": {"content": PROMPT_EXAMPLE}}
    )

    content: Annotated[
        MessageContent,
        Field(
            validation_alias=AliasChoices("content", "message", "text"),
            description="The new text: 1..MAX_MESSAGE_CHARS characters after trimming.",
        ),
    ]
    attachment_ids: Annotated[
        list[MessageId] | None,
        Field(
            description="Omit to keep the attachments of the message edited; else the new "
            "version's: attachments of the message edited and attachments of this chatroom "
            "uploaded and not sent yet (as in a send), at most MAX_ATTACHMENTS_PER_MESSAGE; "
            "[] sends none.",
            max_length=100,
        ),
    ] = None


class ActiveLeaf(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": {"leaf_id": 42}})

    leaf_id: Annotated[
        MessageId,
        Field(
            description="Any message of the chatroom: the branch shown becomes the one through "
            "it, down to its newest leaf."
        ),
    ]


class ForkRequest(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": {"message_id": 42}})

    message_id: Annotated[
        MessageId, Field(description="The new chatroom holds the path up to this message.")
    ]


class SendReceipt(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "status": "queued",
                "message_id": 41,
                "reply_id": 42,
                "stream_url": "/chatroom/12/messages/42/stream",
                "user_message": USER_MESSAGE_EXAMPLE,
                "reply": QUEUED_REPLY_EXAMPLE,
            }
        }
    )

    status: Literal["queued"] = "queued"
    message_id: int = Field(description="The user's message.")
    reply_id: int = Field(description="The assistant message being produced.")
    stream_url: str
    user_message: MessageOut
    reply: MessageOut
