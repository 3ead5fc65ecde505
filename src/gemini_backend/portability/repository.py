"""Statements of share links and of account deletion."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from gemini_backend.attachments.models import STORED, Attachment
from gemini_backend.chat.models import Chatroom, Message
from gemini_backend.portability.models import Share
from gemini_backend.users.models import User


async def add_share(session: AsyncSession, share: Share) -> None:
    session.add(share)
    await session.flush()


async def share_by_id(session: AsyncSession, share_id: str) -> Share | None:
    return await session.scalar(select(Share).where(Share.id == share_id))


async def room_shares(session: AsyncSession, room_id: int) -> list[Share]:
    found = await session.scalars(
        select(Share).where(Share.chatroom_id == room_id).order_by(Share.created_at.desc())
    )
    return list(found)


async def delete_share(session: AsyncSession, user_id: int, share_id: str) -> bool:
    """Delete the user's share; False when there is none of that id that is theirs."""
    done = await session.execute(
        delete(Share).where(Share.id == share_id, Share.user_id == user_id).returning(Share.id)
    )
    return done.scalar_one_or_none() is not None


async def delete_user(session: AsyncSession, user_id: int) -> None:
    """The user's row; the foreign keys' ON DELETE CASCADE take every row that names it (rooms
    with their messages, attachments and shares; sessions with their refresh tokens; usage,
    subscriptions, idempotency keys) and SET NULL keeps the Stripe event ledger anonymous."""
    await session.execute(delete(User).where(User.id == user_id))


# --- export ---------------------------------------------------------------------------------


async def rooms_after(
    session: AsyncSession, user_id: int, after: int, limit: int
) -> list[Chatroom]:
    """The user's rooms with an id above `after`, in id order: a batch of the export."""
    found = await session.scalars(
        select(Chatroom)
        .where(Chatroom.user_id == user_id, Chatroom.id > after)
        .order_by(Chatroom.id)
        .limit(limit)
    )
    return list(found)


async def room_attachments(session: AsyncSession, room_id: int) -> list[Attachment]:
    found = await session.scalars(
        select(Attachment)
        .where(Attachment.chatroom_id == room_id, Attachment.state == STORED)
        .order_by(Attachment.id)
    )
    return list(found)


# --- import ---------------------------------------------------------------------------------

_messages = cast(Table, Message.__table__)
_INSERT_MESSAGES = insert(_messages).returning(_messages.c.id, sort_by_parameter_order=True)


async def insert_messages(session: AsyncSession, rows: list[dict[str, Any]]) -> list[int]:
    """Insert the rows (one level of a tree: their parents are in already); their new ids, in
    the rows' order."""
    found = await session.execute(_INSERT_MESSAGES, rows)
    return list(found.scalars())


async def finish_import(
    session: AsyncSession, room_id: int, leaf_id: int | None, count: int, now: datetime
) -> None:
    await session.execute(
        update(Chatroom)
        .where(Chatroom.id == room_id)
        .values(
            active_leaf_id=leaf_id,
            message_count=count,
            last_message_at=now if count else None,
            activity_at=now,
            auto_title=False,
            updated_at=now,
        )
    )
