"""The chat domain's 404s, shared by the route dependencies and the send (which checks the room
itself, in its statement)."""

from __future__ import annotations

from typing import TypeVar

import structlog

from gemini_backend.chat.models import RoomView
from gemini_backend.core.errors import NotFound

_Room = TypeVar("_Room", bound=RoomView)


class MessageNotFound(NotFound):
    code = "message_not_found"
    detail = "No such message in this chatroom."


class ChatroomNotFound(NotFound):
    code = "chatroom_not_found"
    detail = "No such chatroom."


def found_room(room: _Room | None) -> _Room:
    """The room, or 404 (missing and another user's alike)."""
    if room is None:
        raise ChatroomNotFound()
    structlog.contextvars.bind_contextvars(chatroom_id=room.id)
    return room
