"""Dependencies that load and check chat resources, reused by every route that needs them."""

from __future__ import annotations

from typing import Annotated

import structlog
from fastapi import Depends, Path, Request

from gemini_backend.auth.dependencies import CurrentUser
from gemini_backend.chat import repository as repo
from gemini_backend.chat.errors import MessageNotFound, found_room
from gemini_backend.chat.models import Chatroom, Message, RoomView
from gemini_backend.chat.reads import ChatroomId
from gemini_backend.chat.sending import MessageSender
from gemini_backend.chat.service import ChatroomService
from gemini_backend.core.db import MAX_ID, DbSession
from gemini_backend.services import services_of


async def _owned_chatroom(
    session: DbSession,
    user: CurrentUser,
    chatroom_id: ChatroomId,
) -> Chatroom:
    """The caller's chatroom; another user's room is 404, exactly like a missing one."""
    return found_room(await repo.owned_room(session, user.id, chatroom_id))


async def _room_view(
    session: DbSession,
    user: CurrentUser,
    chatroom_id: ChatroomId,
) -> RoomView:
    """The same check for routes that only read the room: a plain row, no ORM instance."""
    return found_room(await repo.owned_room_view(session, user.id, chatroom_id))


async def _room_message(
    session: DbSession,
    user: CurrentUser,
    chatroom_id: ChatroomId,
    message_id: Annotated[int, Path(ge=1, le=MAX_ID, description="Message id")],
) -> Message:
    """A message of the caller's chatroom: one statement checks both. When it finds nothing,
    the room is looked at to tell which 404 it is (another user's room is a missing room)."""
    message = await repo.owned_message(session, user.id, chatroom_id, message_id)
    if message is None:
        await _room_view(session, user, chatroom_id)  # 404 chatroom_not_found
        raise MessageNotFound()
    structlog.contextvars.bind_contextvars(chatroom_id=chatroom_id, message_id=message.id)
    return message


# Dependencies are `async def` even when they only build an object: FastAPI runs a plain `def`
# dependency in its thread pool, a thread hop per request.
async def _chatroom_service(request: Request, session: DbSession) -> ChatroomService:
    state = services_of(request)
    return ChatroomService(
        session, state.clock, state.chatroom_cache, state.settings, state.models.catalogue
    )


async def _message_sender(request: Request) -> MessageSender:
    """The app's sender (main.py): it holds no request session; a send takes its own
    connection (sending.py), retry and cancel are given the request's session."""
    sender: MessageSender = services_of(request).message_sender
    return sender


OwnedChatroom = Annotated[Chatroom, Depends(_owned_chatroom)]
ChatroomView = Annotated[RoomView, Depends(_room_view)]
RoomMessage = Annotated[Message, Depends(_room_message)]
ChatroomServiceDep = Annotated[ChatroomService, Depends(_chatroom_service)]
MessageSenderDep = Annotated[MessageSender, Depends(_message_sender)]
