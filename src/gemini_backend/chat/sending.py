"""Sending a message (DESIGN.md, "The path of a message", step 1).

In one transaction: the idempotency key is claimed, the quota slot is taken, the user message
and a `queued` reply are inserted and the room's counters move. The job (the reply id) is
enqueued only after the commit, so a rolled-back request enqueues nothing.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from gemini_backend.chat.cache import ChatroomListCache
from gemini_backend.chat.models import Chatroom, IdempotencyKey, Message
from gemini_backend.chat.schemas import MessageOut, SendReceipt
from gemini_backend.config import Settings
from gemini_backend.core.clock import Clock
from gemini_backend.core.db import after_commit
from gemini_backend.core.errors import ValidationFailed
from gemini_backend.core.sql import insert_for
from gemini_backend.core.throttle import Throttle
from gemini_backend.quota.service import Quota, QuotaState
from gemini_backend.users.models import User
from gemini_backend.users.schemas import Tier
from gemini_backend.users.service import tier_of
from gemini_backend.worker.replies import QUEUED
from gemini_backend.worker.runtime import ReplyPipeline

IDEMPOTENCY_WINDOW = timedelta(hours=24)
MAX_IDEMPOTENCY_KEY = 255


class MessageTooLong(ValidationFailed):
    code = "message_too_long"


class InvalidIdempotencyKey(ValidationFailed):
    code = "invalid_idempotency_key"
    detail = f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters."


def stream_url(room_id: int, reply_id: int) -> str:
    return f"/chatroom/{room_id}/messages/{reply_id}/stream"


class MessageSender:
    def __init__(
        self,
        *,
        session: AsyncSession,
        settings: Settings,
        clock: Clock,
        quota: Quota,
        throttle: Throttle,
        pipeline: ReplyPipeline,
        list_cache: ChatroomListCache,
    ) -> None:
        self.session = session
        self.settings = settings
        self.clock = clock
        self.quota = quota
        self.throttle = throttle
        self.pipeline = pipeline
        self.list_cache = list_cache

    @staticmethod
    def tier(user: User) -> Tier:
        return tier_of(user)

    async def send(
        self, user: User, room: Chatroom, content: str, idempotency_key: str | None
    ) -> tuple[SendReceipt, QuotaState | None]:
        """The receipt, and the quota state (None when the receipt is a replay)."""
        if len(content) > self.settings.max_message_chars:
            raise MessageTooLong(
                f"A message may have at most {self.settings.max_message_chars} characters."
            )
        now = self.clock.now()
        key_row: int | None = None
        if idempotency_key is not None:
            if not (
                0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY
                and idempotency_key.isascii()
                and idempotency_key.isprintable()
            ):
                raise InvalidIdempotencyKey()
            replay = await self._claim_key(user.id, room.id, idempotency_key, now)
            if isinstance(replay, SendReceipt):
                return replay, None
            key_row = replay
        await self.throttle.hit(
            f"{self.settings.send_per_minute}/minute",
            "send",
            str(user.id),
            detail="Too many messages in a minute; slow down.",
        )
        quota = await self.quota.reserve_daily_slot(self.session, user.id, tier_of(user), now)

        user_message = Message(
            chatroom_id=room.id,
            role="user",
            content=content,
            status="completed",
            attempts=0,
            created_at=now,
            updated_at=now,
            completed_at=now,
        )
        self.session.add(user_message)
        await self.session.flush()
        reply = Message(
            chatroom_id=room.id,
            role="assistant",
            content="",
            status=QUEUED,
            attempts=0,
            reply_to=user_message.id,
            quota_day=quota.day,
            created_at=now,
            updated_at=now,
        )
        self.session.add(reply)
        await self.session.execute(
            update(Chatroom)
            .where(Chatroom.id == room.id)
            .values(
                message_count=Chatroom.message_count + 2,
                last_message_at=now,
                activity_at=now,
                updated_at=now,
            )
        )
        await self.session.flush()
        receipt = SendReceipt(
            message_id=user_message.id,
            reply_id=reply.id,
            stream_url=stream_url(room.id, reply.id),
            user_message=MessageOut.from_row(user_message),
            reply=MessageOut.from_row(reply),
        )
        if key_row is not None:
            await self.session.execute(
                update(IdempotencyKey)
                .where(IdempotencyKey.id == key_row)
                .values(receipt=receipt.model_dump_json())
            )
        reply_id, user_id = reply.id, user.id

        async def enqueue() -> None:
            await self.pipeline.enqueue(reply_id)

        async def invalidate() -> None:
            await self.list_cache.invalidate(user_id)

        after_commit(self.session, enqueue)
        after_commit(self.session, invalidate)
        return receipt, quota

    async def _claim_key(
        self, user_id: int, room_id: int, key: str, now: datetime
    ) -> SendReceipt | int:
        """The stored receipt for a key already used, or the id of a fresh key row.

        The unique (user_id, key) row is inserted first: a concurrent request with the same key
        waits on it and then finds the receipt of the one that committed.
        """
        await self.session.execute(
            delete(IdempotencyKey).where(
                IdempotencyKey.user_id == user_id,
                IdempotencyKey.key == key,
                IdempotencyKey.created_at < now - IDEMPOTENCY_WINDOW,
            )
        )
        table = IdempotencyKey.__table__
        inserted = (
            await self.session.execute(
                insert_for(self.session, table)
                .values(user_id=user_id, key=key, chatroom_id=room_id, created_at=now)
                .on_conflict_do_nothing(index_elements=[table.c.user_id, table.c.key])
                .returning(table.c.id)
            )
        ).scalar_one_or_none()
        if inserted is not None:
            return int(inserted)
        receipt = (
            await self.session.execute(
                select(IdempotencyKey.receipt).where(
                    IdempotencyKey.user_id == user_id, IdempotencyKey.key == key
                )
            )
        ).scalar_one()
        if receipt is None:  # pragma: no cover - the row is only visible once committed
            raise InvalidIdempotencyKey("That Idempotency-Key is being used by another request.")
        return SendReceipt.model_validate_json(receipt)
