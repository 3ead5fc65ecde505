"""The chat domain's errors shared by its modules: the 404s (the route dependencies, and the send,
which checks the room itself, in its statement) and the conflict of a reply in progress."""

from __future__ import annotations

from typing import TypeVar

import structlog

from gemini_backend.chat.models import RoomView
from gemini_backend.core.errors import Conflict, NotFound

_Room = TypeVar("_Room", bound=RoomView)


class MessageNotFound(NotFound):
    code = "message_not_found"
    detail = "No such message in this chatroom."


class ReplyInProgress(Conflict):
    code = "reply_in_progress"
    detail = "A reply to this message is still being produced."


class BranchReplyInProgress(ReplyInProgress):
    """A reply on a path being copied (a fork) is not finished."""

    detail = "A reply on this branch is still being produced."


class ChatroomNotFound(NotFound):
    code = "chatroom_not_found"
    detail = "No such chatroom."


def found_room(room: _Room | None) -> _Room:
    """The room, or 404 (missing and another user's alike)."""
    if room is None:
        raise ChatroomNotFound()
    structlog.contextvars.bind_contextvars(chatroom_id=room.id)
    return room
