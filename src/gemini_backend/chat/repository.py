"""Queries of the chat domain."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from gemini_backend.chat.models import Chatroom, Message


async def add_room(session: AsyncSession, room: Chatroom) -> Chatroom:
    session.add(room)
    await session.flush()
    return room


async def rooms_page(
    session: AsyncSession, user_id: int, limit: int, after: tuple[datetime, int] | None
) -> list[Chatroom]:
    stmt = select(Chatroom).where(Chatroom.user_id == user_id)
    if after is not None:
        stmt = stmt.where(tuple_(Chatroom.activity_at, Chatroom.id) < tuple_(*after))
    stmt = stmt.order_by(Chatroom.activity_at.desc(), Chatroom.id.desc()).limit(limit)
    return list((await session.execute(stmt)).scalars())


async def owned_room(session: AsyncSession, user_id: int, room_id: int) -> Chatroom | None:
    stmt = select(Chatroom).where(Chatroom.id == room_id, Chatroom.user_id == user_id)
    return (await session.execute(stmt)).scalar_one_or_none()


async def delete_room(session: AsyncSession, room_id: int) -> None:
    await session.execute(delete(Chatroom).where(Chatroom.id == room_id))


async def messages_page(
    session: AsyncSession, room_id: int, limit: int, before_id: int | None
) -> list[Message]:
    """Up to `limit` messages older than `before_id` (or the latest), oldest first."""
    stmt = select(Message).where(Message.chatroom_id == room_id)
    if before_id is not None:
        stmt = stmt.where(Message.id < before_id)
    stmt = stmt.order_by(Message.id.desc()).limit(limit)
    rows = list((await session.execute(stmt)).scalars())
    rows.reverse()
    return rows


async def room_message(session: AsyncSession, room_id: int, message_id: int) -> Message | None:
    stmt = select(Message).where(Message.id == message_id, Message.chatroom_id == room_id)
    return (await session.execute(stmt)).scalar_one_or_none()
