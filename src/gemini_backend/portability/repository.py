"""Statements of share links and of account deletion."""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

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
