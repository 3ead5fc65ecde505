"""A room, or every room of an account, as a document to take elsewhere (GDPR article 20).

The JSON of a room is the whole tree: every message with its parent, parts and status, the
room's options and the attachments' metadata (not their bytes). `POST /chatroom/import` reads
the same document back (imports.py). The account's export is NDJSON, one room a line, read
room by room on short sessions of its own, so a large account never sits in memory and no
connection is held while the client reads."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gemini_backend.chat import repository as chat_repo
from gemini_backend.chat.models import Chatroom
from gemini_backend.chat.options import thinking_value
from gemini_backend.chat.schemas import message_parts
from gemini_backend.portability import repository as repo

FORMAT = "gemini-backend/chatroom"
VERSION = 1
ROOMS_PER_BATCH = 20


def _time(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def _message(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "parent_id": row.parent_id,
        "role": "user" if row.role == "user" else "assistant",
        "content": row.content,
        "parts": message_parts(row.content, row.parts),
        "status": row.status,
        "error": row.error,
        "finish_reason": row.finish_reason,
        "model": row.model,
        "usage": {
            "prompt_tokens": row.prompt_tokens,
            "output_tokens": row.output_tokens,
            "thinking_tokens": row.thinking_tokens,
            "cached_tokens": row.cached_tokens,
        },
        "created_at": _time(row.created_at),
        "completed_at": _time(row.completed_at),
    }


async def room_document(session: AsyncSession, room: Chatroom) -> dict[str, Any]:
    rows = await chat_repo.all_messages(session, room.id)
    files = await repo.room_attachments(session, room.id)
    return {
        "format": FORMAT,
        "version": VERSION,
        "chatroom": {
            "id": room.id,
            "name": room.name,
            "system_prompt": room.system_prompt,
            "model": room.model,
            "temperature": room.temperature,
            "thinking": thinking_value(room.thinking),
            "grounding": room.grounding,
            "created_at": _time(room.created_at),
            "active_leaf_id": room.active_leaf_id,
        },
        "messages": [_message(row) for row in rows],
        "attachments": [
            {
                "id": f.id,
                "message_id": f.message_id,
                "filename": f.filename,
                "media_type": f.media_type,
                "size": f.size,
                "sha256": f.sha256,
                "created_at": _time(f.created_at),
            }
            for f in files
        ],
    }


def _markdown_message(row: Any) -> str:
    who = "You" if row.role == "user" else "Assistant"
    lines = [f"### {who}", ""]
    for part in message_parts(row.content, row.parts):
        if part.get("type") == "attachment":
            lines.append(f"*Attached: {part.get('filename')} ({part.get('media_type')})*")
            lines.append("")
    if row.content:
        lines += [row.content, ""]
    if row.role != "user" and row.status != "completed":
        lines += [f"*({row.status})*", ""]
    return "\n".join(lines)


async def room_markdown(session: AsyncSession, room: Chatroom) -> str:
    """The active branch as Markdown: the room's name, its system prompt, then the messages."""
    rows = []
    if room.active_leaf_id is not None:
        rows = await chat_repo.branch_up_to(
            session, room.id, room.active_leaf_id, chat_repo.WHOLE_BRANCH
        )
    head = [f"# {room.name}", ""]
    if room.system_prompt:
        head += ["> " + line for line in room.system_prompt.splitlines()] + [""]
    return "\n".join(head) + "\n".join(_markdown_message(row) for row in rows)


async def account_lines(
    sessionmaker: async_sessionmaker[AsyncSession], user_id: int
) -> AsyncIterator[bytes]:
    """Every room of the user as NDJSON: the rooms' rows a batch at a time, then each room's
    messages on a session of its own, sent before the next room is read."""
    after = 0
    while True:
        async with sessionmaker() as session:
            rooms = await repo.rooms_after(session, user_id, after, ROOMS_PER_BATCH)
        for room in rooms:
            async with sessionmaker() as session:
                document = await room_document(session, room)
            yield json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
        if len(rooms) < ROOMS_PER_BATCH:
            return
        after = rooms[-1].id
