"""Chatroom rules. Services never commit; cache invalidation runs after the commit."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from gemini_backend.chat import repository as repo
from gemini_backend.chat.cache import ChatroomCache
from gemini_backend.chat.models import DEFAULT_ROOM_NAME, Chatroom, RoomView
from gemini_backend.chat.schemas import (
    ChatroomCreate,
    ChatroomDetail,
    ChatroomOut,
    ChatroomPage,
    ChatroomUpdate,
    MessagePage,
)
from gemini_backend.config import Settings
from gemini_backend.core.clock import Clock
from gemini_backend.core.db import MAX_ID, after_commit
from gemini_backend.core.errors import BadRequest, Conflict, ValidationFailed

ROOM_DETAIL_MESSAGES = 50


class InvalidCursor(BadRequest):
    code = "invalid_cursor"
    detail = "The cursor is not one this server issued."


class SystemPromptTooLong(ValidationFailed):
    code = "system_prompt_too_long"


class ChatroomLimitReached(Conflict):
    code = "chatroom_limit_reached"


def message_fields(row: repo.MessageRow) -> dict[str, Any]:
    """The fields of a MessageOut from a row of repository.MESSAGE_OUT_COLUMNS, as
    MessageOut.from_row takes them from an ORM object. Given as data to the model that holds
    the messages, which validates the whole list in one pass."""
    (
        id_,
        chatroom_id,
        role,
        content,
        status,
        error,
        finish_reason,
        prompt_tokens,
        output_tokens,
        thinking_tokens,
        model,
        reply_to,
        created_at,
        completed_at,
    ) = row
    return {
        "id": id_,
        "chatroom_id": chatroom_id,
        "role": "user" if role == "user" else "assistant",
        "content": content,
        "status": status,
        "error": error,
        "finish_reason": finish_reason,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "output_tokens": output_tokens,
            "thinking_tokens": thinking_tokens,
        },
        "model": model,
        "reply_to": reply_to,
        "created_at": created_at,
        "completed_at": completed_at,
    }


def encode_room_cursor(room: RoomView) -> str:
    raw = json.dumps([room.activity_at.isoformat(), room.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_room_cursor(cursor: str) -> tuple[datetime, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        when, room_id = json.loads(raw)
        parsed = datetime.fromisoformat(when)
        if (
            parsed.tzinfo is None
            or type(room_id) is not int
            or not 1 <= room_id <= MAX_ID  # beyond it PostgreSQL refuses the parameter (a 500)
        ):
            raise ValueError
        # In UTC, as the database compares it: an instant at the ends of time may not exist
        # there (OverflowError), and the driver would fail on it (a 500).
        return parsed.astimezone(UTC), room_id
    except (ValueError, TypeError, OverflowError, binascii.Error, json.JSONDecodeError) as exc:
        raise InvalidCursor() from exc


class ChatroomService:
    def __init__(
        self, session: AsyncSession, clock: Clock, cache: ChatroomCache, settings: Settings
    ) -> None:
        self.session = session
        self.clock = clock
        self.cache = cache
        self.settings = settings

    def _check_prompt(self, system_prompt: str | None) -> None:
        limit = self.settings.max_system_prompt_chars
        if system_prompt is not None and len(system_prompt) > limit:
            raise SystemPromptTooLong(f"A system prompt may have at most {limit} characters.")

    def _invalidate_list_after_commit(self, user_id: int) -> None:
        async def invalidate() -> None:
            await self.cache.invalidate(user_id)

        after_commit(self.session, invalidate)

    async def create(self, user_id: int, body: ChatroomCreate) -> ChatroomOut:
        self._check_prompt(body.system_prompt)
        limit = self.settings.max_chatrooms_per_user
        if await repo.room_count_locked(self.session, user_id) >= limit:
            raise ChatroomLimitReached(
                f"You have {limit} chatrooms, the most allowed; delete one to create another."
            )
        now = self.clock.now()
        room = await repo.add_room(
            self.session,
            Chatroom(
                user_id=user_id,
                name=body.name or DEFAULT_ROOM_NAME,
                auto_title=body.name is None,
                system_prompt=body.system_prompt or None,
                message_count=0,
                activity_at=now,
                created_at=now,
                updated_at=now,
            ),
        )
        self._invalidate_list_after_commit(user_id)
        return ChatroomOut.from_row(room)

    async def list_page(self, user_id: int, limit: int, cursor: str | None) -> ChatroomPage:
        after = decode_room_cursor(cursor) if cursor else None
        rooms = await repo.rooms_page(self.session, user_id, limit + 1, after)
        more = len(rooms) > limit
        rooms = rooms[:limit]
        return ChatroomPage(
            chatrooms=[ChatroomOut.from_row(r) for r in rooms],
            next_cursor=encode_room_cursor(rooms[-1]) if more else None,
        )

    async def detail(self, room: RoomView) -> ChatroomDetail:
        rows = await repo.messages_page(self.session, room.id, ROOM_DETAIL_MESSAGES, None)
        return ChatroomDetail.model_validate(
            {
                **ChatroomOut.from_row(room).model_dump(),
                "messages": [message_fields(row) for row in rows],
            }
        )

    async def update(self, room: Chatroom, body: ChatroomUpdate) -> ChatroomOut:
        fields = body.model_fields_set
        if "name" in fields and body.name is None:
            raise ValidationFailed("A chatroom's name cannot be null.")
        self._check_prompt(body.system_prompt)
        if "name" in fields and body.name is not None:
            room.name = body.name
            room.auto_title = False
        if "system_prompt" in fields:
            room.system_prompt = body.system_prompt or None
        if fields:
            room.updated_at = self.clock.now()
            await self.session.flush()
            self._invalidate_list_after_commit(room.user_id)
        return ChatroomOut.from_row(room)

    async def delete(self, room: Chatroom) -> None:
        await repo.delete_room(self.session, room.id)
        self._invalidate_list_after_commit(room.user_id)

    async def messages(self, room: RoomView, limit: int, before: int | None) -> MessagePage:
        rows = await repo.messages_page(self.session, room.id, limit + 1, before)
        more = len(rows) > limit
        rows = rows[-limit:] if more else rows
        return MessagePage.model_validate(
            {
                "messages": [message_fields(row) for row in rows],
                "next_cursor": str(rows[0].id) if more and rows else None,
            }
        )
