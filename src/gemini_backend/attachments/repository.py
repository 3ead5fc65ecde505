"""The attachments table's statements."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from gemini_backend.attachments.models import PENDING, STORED, Attachment, StorageDeletion
from gemini_backend.chat.models import Chatroom
from gemini_backend.core.sql import insert_for


async def room_owned(session: AsyncSession, user_id: int, room_id: int) -> bool:
    found = await session.execute(
        select(Chatroom.id).where(Chatroom.id == room_id, Chatroom.user_id == user_id)
    )
    return found.first() is not None


async def add_pending(session: AsyncSession, row: Attachment) -> int:
    session.add(row)
    await session.flush()
    return row.id


async def mark_stored(
    session: AsyncSession, attachment_id: int, *, size: int, sha256: str
) -> Attachment | None:
    """The row, stored; None when it is gone (its room deleted, or purged as stale)."""
    found = await session.execute(
        update(Attachment)
        .where(Attachment.id == attachment_id, Attachment.state == PENDING)
        .values(state=STORED, size=size, sha256=sha256)
        .returning(Attachment)
    )
    return found.scalar_one_or_none()


async def forget(session: AsyncSession, attachment_id: int) -> None:
    await session.execute(delete(Attachment).where(Attachment.id == attachment_id))


async def owned_stored(
    session: AsyncSession, user_id: int, room_id: int, attachment_id: int
) -> Attachment | None:
    found = await session.execute(
        select(Attachment).where(
            Attachment.id == attachment_id,
            Attachment.chatroom_id == room_id,
            Attachment.user_id == user_id,
            Attachment.state == STORED,
        )
    )
    return found.scalar_one_or_none()


async def delete_unsent(session: AsyncSession, row: Attachment) -> bool:
    """Delete the stored attachment if no message has it yet (a send may be linking it)."""
    done = await session.execute(
        delete(Attachment).where(
            Attachment.id == row.id, Attachment.message_id.is_(None), Attachment.state == STORED
        )
    )
    return int(done.rowcount) == 1  # type: ignore[attr-defined]


async def of_room(session: AsyncSession, room_id: int, ids: Sequence[int]) -> list[Attachment]:
    found = await session.execute(
        select(Attachment).where(Attachment.chatroom_id == room_id, Attachment.id.in_(ids))
    )
    return list(found.scalars())


async def link(session: AsyncSession, ids: Sequence[int], message_id: int) -> int:
    """Give the (stored, unsent) attachments to the message; how many were."""
    done = await session.execute(
        update(Attachment)
        .where(Attachment.id.in_(ids), Attachment.message_id.is_(None), Attachment.state == STORED)
        .values(message_id=message_id)
    )
    return int(done.rowcount)  # type: ignore[attr-defined]


async def of_message(session: AsyncSession, message_id: int) -> list[Attachment]:
    """The stored attachments of one message, in the order they were uploaded."""
    found = await session.execute(
        select(Attachment)
        .where(Attachment.message_id == message_id, Attachment.state == STORED)
        .order_by(Attachment.id)
    )
    return list(found.scalars())


async def room_keys(session: AsyncSession, room_id: int) -> list[str]:
    found = await session.execute(
        select(Attachment.storage_key).where(Attachment.chatroom_id == room_id)
    )
    return list(found.scalars())


async def stale_pending(
    session: AsyncSession, cutoff: datetime, limit: int
) -> list[tuple[int, str]]:
    found = await session.execute(
        select(Attachment.id, Attachment.storage_key)
        .where(Attachment.state == PENDING, Attachment.created_at < cutoff)
        .order_by(Attachment.id)
        .limit(limit)
    )
    return [(id_, key) for id_, key in found]


async def delete_pending(session: AsyncSession, ids: Sequence[int]) -> int:
    done = await session.execute(
        delete(Attachment).where(Attachment.id.in_(ids), Attachment.state == PENDING)
    )
    return int(done.rowcount)  # type: ignore[attr-defined]


async def of_messages(session: AsyncSession, message_ids: Sequence[int]) -> list[Any]:
    """The stored attachments of these messages, in the order they were uploaded."""
    if not message_ids:
        return []
    found = await session.execute(
        select(
            Attachment.id,
            Attachment.message_id,
            Attachment.filename,
            Attachment.media_type,
            Attachment.size,
            Attachment.sha256,
            Attachment.storage_key,
        )
        .where(Attachment.message_id.in_(message_ids), Attachment.state == STORED)
        .order_by(Attachment.id)
    )
    return list(found.all())


async def count_pending(session: AsyncSession) -> int:
    found = await session.execute(
        select(func.count()).select_from(Attachment).where(Attachment.state == PENDING)
    )
    return int(found.scalar_one())


# --- objects waiting to be deleted (StorageDeletion) -----------------------------------------


async def user_keys(session: AsyncSession, user_id: int) -> list[str]:
    found = await session.execute(
        select(Attachment.storage_key).where(Attachment.user_id == user_id)
    )
    return list(found.scalars())


async def note_deletions(session: AsyncSession, keys: Sequence[str], now: datetime) -> None:
    table = StorageDeletion.__table__
    await session.execute(
        insert_for(session, table).on_conflict_do_nothing(index_elements=[table.c.storage_key]),
        [{"storage_key": key, "created_at": now} for key in keys],
    )


async def due_deletions(session: AsyncSession, cutoff: datetime, limit: int) -> list[str]:
    found = await session.execute(
        select(StorageDeletion.storage_key)
        .where(StorageDeletion.created_at < cutoff)
        .order_by(StorageDeletion.created_at)
        .limit(limit)
    )
    return list(found.scalars())


async def forget_deletions(session: AsyncSession, keys: Sequence[str]) -> int:
    done = await session.execute(
        delete(StorageDeletion).where(StorageDeletion.storage_key.in_(list(keys)))
    )
    return int(done.rowcount)  # type: ignore[attr-defined]
