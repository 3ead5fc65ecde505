"""Chatroom rules. Services never commit; cache invalidation runs after the commit."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncSession

from gemini_backend.ai.catalogue import ModelCatalogue
from gemini_backend.auth.principals import SignedInUser
from gemini_backend.chat import repository as repo
from gemini_backend.chat.cache import ChatroomCache
from gemini_backend.chat.errors import BranchReplyInProgress, MessageNotFound
from gemini_backend.chat.models import DEFAULT_ROOM_NAME, Chatroom, Message, RoomView
from gemini_backend.chat.options import (
    RoomOptions,
    check_room_options,
    thinking_column,
    thinking_value,
)
from gemini_backend.chat.schemas import (
    ChatroomCreate,
    ChatroomDetail,
    ChatroomOut,
    ChatroomPage,
    ChatroomTree,
    ChatroomUpdate,
    MessageOut,
    MessagePage,
    message_parts,
)
from gemini_backend.chat.states import ACTIVE_STATES
from gemini_backend.config import Settings
from gemini_backend.core.clock import Clock
from gemini_backend.core.db import MAX_ID, after_commit
from gemini_backend.core.errors import BadRequest, Conflict, ValidationFailed
from gemini_backend.users.tier import tier_of

ROOM_DETAIL_MESSAGES = 50


class InvalidCursor(BadRequest):
    code = "invalid_cursor"
    detail = "The cursor is not one this server issued."


class SystemPromptTooLong(ValidationFailed):
    code = "system_prompt_too_long"


class ChatroomLimitReached(Conflict):
    code = "chatroom_limit_reached"


def message_fields(row: repo.MessageRow, sibling_ids: list[int]) -> dict[str, Any]:
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
        parent_id,
        parts,
        cached_tokens,
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
            "cached_tokens": cached_tokens,
        },
        "model": model,
        "reply_to": reply_to,
        "parent_id": parent_id,
        "sibling_ids": sibling_ids,
        "parts": message_parts(content, parts),
        "created_at": created_at,
        "completed_at": completed_at,
    }


async def messages_with_siblings(
    session: AsyncSession, room_id: int, rows: list[repo.MessageRow]
) -> list[dict[str, Any]]:
    """message_fields of each row, their sibling lists read in one query."""
    siblings = await repo.sibling_ids(session, room_id, [row.parent_id for row in rows])
    return [message_fields(row, siblings[row.parent_id] or [row.id]) for row in rows]


async def message_out(session: AsyncSession, message: Message | Row[Any]) -> MessageOut:
    """One message as the API shows it, its siblings read."""
    siblings = await repo.sibling_ids(session, message.chatroom_id, [message.parent_id])
    return MessageOut.from_row(message, siblings[message.parent_id])


def tree_fields(rows: list[repo.MessageRow]) -> list[dict[str, Any]]:
    """message_fields of every message of a room (all siblings are among them)."""
    children: dict[int | None, list[int]] = {}
    for row in rows:
        children.setdefault(row.parent_id, []).append(row.id)
    return [message_fields(row, children[row.parent_id]) for row in rows]


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


OPTION_FIELDS = ("model", "temperature", "thinking", "grounding")


class ChatroomService:
    def __init__(
        self,
        session: AsyncSession,
        clock: Clock,
        cache: ChatroomCache,
        settings: Settings,
        catalogue: ModelCatalogue | None = None,  # needed to create or change a room
    ) -> None:
        self.session = session
        self.clock = clock
        self.cache = cache
        self.settings = settings
        self.catalogue = catalogue

    def _check_options(self, user: SignedInUser, options: RoomOptions, changed: set[str]) -> None:
        if not changed & set(OPTION_FIELDS):
            return
        assert self.catalogue is not None, "ChatroomService needs the catalogue to change a room"
        tier = tier_of(user, self.clock.now(), self.settings)
        check_room_options(self.catalogue, tier, options, changed)

    def _check_prompt(self, system_prompt: str | None) -> None:
        limit = self.settings.max_system_prompt_chars
        if system_prompt is not None and len(system_prompt) > limit:
            raise SystemPromptTooLong(f"A system prompt may have at most {limit} characters.")

    async def _check_room_count(self, user_id: int) -> None:
        limit = self.settings.max_chatrooms_per_user
        if await repo.room_count_locked(self.session, user_id) >= limit:
            raise ChatroomLimitReached(
                f"You have {limit} chatrooms, the most allowed; delete one to create another."
            )

    def _room_changed_after_commit(self, user_id: int) -> None:
        async def changed() -> None:
            await self.cache.room_changed(user_id)

        after_commit(self.session, changed)

    def _invalidate_list_after_commit(self, user_id: int) -> None:
        async def invalidate() -> None:
            await self.cache.invalidate(user_id)

        after_commit(self.session, invalidate)

    async def create(self, user: SignedInUser, body: ChatroomCreate) -> ChatroomOut:
        user_id = user.id
        self._check_prompt(body.system_prompt)
        options = RoomOptions(body.model, body.temperature, body.thinking, body.grounding)
        self._check_options(user, options, body.model_fields_set)
        await self._check_room_count(user_id)
        now = self.clock.now()
        room = await repo.add_room(
            self.session,
            Chatroom(
                user_id=user_id,
                name=body.name or DEFAULT_ROOM_NAME,
                auto_title=body.name is None,
                system_prompt=body.system_prompt or None,
                model=body.model,
                temperature=body.temperature,
                thinking=thinking_column(body.thinking),
                grounding=body.grounding,
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

    async def detail(self, room: RoomView, leaf_id: int | None = None) -> ChatroomDetail:
        """The room with the latest messages of its active branch (or of the branch ending
        at `leaf_id`, just made active)."""
        leaf = room.active_leaf_id if leaf_id is None else leaf_id
        rows = []
        if leaf is not None:
            rows = await repo.branch_up_to(self.session, room.id, leaf, ROOM_DETAIL_MESSAGES)
        return ChatroomDetail.model_validate(
            {
                **ChatroomOut.from_row(room).model_dump(),
                "active_leaf_id": leaf,
                "messages": await messages_with_siblings(self.session, room.id, rows),
            }
        )

    async def tree(self, room: RoomView) -> ChatroomTree:
        rows = await repo.all_messages(self.session, room.id)
        return ChatroomTree.model_validate(
            {"messages": tree_fields(rows), "active_leaf_id": room.active_leaf_id}
        )

    async def set_active(self, room: RoomView, message_id: int) -> ChatroomDetail:
        """Show the branch through `message_id`, down its newest children to a leaf."""
        await repo.lock_room(self.session, room.id)
        leaf = await repo.newest_leaf_under(self.session, room.id, message_id)
        if leaf is None:
            raise MessageNotFound()
        await repo.set_active_leaf(self.session, room.id, leaf)
        self._room_changed_after_commit(room.user_id)
        return await self.detail(room, leaf)

    async def fork(self, room: RoomView, message_id: int) -> ChatroomDetail:
        """A new room of the user's holding copies of the path from the root to `message_id`:
        the conversation up to there, to go on with separately."""
        path = await repo.branch_up_to(self.session, room.id, message_id, repo.WHOLE_BRANCH)
        if not path:
            raise MessageNotFound()
        if any(row.status in ACTIVE_STATES for row in path):
            raise BranchReplyInProgress()
        await self._check_room_count(room.user_id)
        now = self.clock.now()
        copy = await repo.add_room(
            self.session,
            Chatroom(
                user_id=room.user_id,
                name=f"{room.name} (fork)"[:200],
                auto_title=False,
                system_prompt=room.system_prompt,
                model=room.model,
                temperature=room.temperature,
                thinking=room.thinking,
                grounding=room.grounding,
                message_count=len(path),
                last_message_at=now,
                activity_at=now,
                created_at=now,
                updated_at=now,
            ),
        )
        copy.active_leaf_id = await repo.copy_path(self.session, copy.id, path, now)
        await self.session.flush()
        self._invalidate_list_after_commit(room.user_id)
        return await self.detail(copy)

    async def update(self, room: Chatroom, body: ChatroomUpdate, user: SignedInUser) -> ChatroomOut:
        fields = body.model_fields_set
        if "name" in fields and body.name is None:
            raise ValidationFailed("A chatroom's name cannot be null.")
        self._check_prompt(body.system_prompt)
        self._check_options(user, self._options_after(room, body), fields)
        if "name" in fields and body.name is not None:
            room.name = body.name
            room.auto_title = False
        if "system_prompt" in fields:
            room.system_prompt = body.system_prompt or None
        self._set_options(room, body)
        if fields:
            room.updated_at = self.clock.now()
            await self.session.flush()
            self._invalidate_list_after_commit(room.user_id)
        return ChatroomOut.from_row(room)

    @staticmethod
    def _options_after(room: Chatroom, body: ChatroomUpdate) -> RoomOptions:
        """The room's options as the update would leave them (the fields sent replace)."""
        sent = body.model_fields_set
        return RoomOptions(
            body.model if "model" in sent else room.model,
            body.temperature if "temperature" in sent else room.temperature,
            body.thinking if "thinking" in sent else thinking_value(room.thinking),
            body.grounding if "grounding" in sent else room.grounding,
        )

    @staticmethod
    def _set_options(room: Chatroom, body: ChatroomUpdate) -> None:
        sent = body.model_fields_set
        if "model" in sent:
            room.model = body.model
        if "temperature" in sent:
            room.temperature = body.temperature
        if "thinking" in sent:
            room.thinking = thinking_column(body.thinking)
        if "grounding" in sent:
            room.grounding = body.grounding

    async def delete(self, room: Chatroom) -> None:
        await repo.delete_room(self.session, room.id)
        self._invalidate_list_after_commit(room.user_id)

    async def messages(self, room: RoomView, limit: int, before: int | None) -> MessagePage:
        """A page of the active branch: its latest `limit` messages, or the `limit` before
        `before` (a message of the room) on its branch; oldest first."""
        if before is None:
            start, extra = room.active_leaf_id, 1
        else:
            start, extra = before, 2  # `before` itself comes back first: dropped
        rows = []
        if start is not None:
            rows = await repo.branch_up_to(self.session, room.id, start, limit + extra)
        if before is not None:
            if not rows:
                raise MessageNotFound("`before` names no message of this chatroom.")
            rows.pop()
        more = len(rows) > limit
        rows = rows[-limit:] if more else rows
        return MessagePage.model_validate(
            {
                "messages": await messages_with_siblings(self.session, room.id, rows),
                "next_cursor": str(rows[0].id) if more and rows else None,
            }
        )
