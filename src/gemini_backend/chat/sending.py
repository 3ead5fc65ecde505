"""Sending a message (DESIGN.md, "The path of a message", step 1).

In one transaction: the idempotency key is claimed, the quota slot is taken, the user message
and a `queued` reply are inserted and the room's counters move. The job (the reply id) is
enqueued only after the commit, so a rolled-back request enqueues nothing.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import structlog
from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from gemini_backend.chat.cache import ChatroomListCache
from gemini_backend.chat.models import Chatroom, IdempotencyKey, Message
from gemini_backend.chat.schemas import MessageOut, SendReceipt
from gemini_backend.config import Settings
from gemini_backend.core.cache import Cache
from gemini_backend.core.clock import Clock
from gemini_backend.core.db import after_commit
from gemini_backend.core.errors import BadRequest, Conflict, TooManyRequests, ValidationFailed
from gemini_backend.core.metrics import QUOTA_REJECTIONS
from gemini_backend.core.sql import insert_for
from gemini_backend.core.streams import ReplyStream
from gemini_backend.core.throttle import Throttle
from gemini_backend.quota.service import Quota, QuotaState
from gemini_backend.users.models import User
from gemini_backend.users.service import tier_of
from gemini_backend.worker.replies import (
    ACTIVE_STATES,
    CANCELLED,
    FINAL_STATES,
    QUEUED,
    cancel_key,
)
from gemini_backend.worker.runtime import ReplyPipeline

IDEMPOTENCY_WINDOW = timedelta(hours=24)
MAX_IDEMPOTENCY_KEY = 255


class MessageTooLong(ValidationFailed):
    code = "message_too_long"


class ReplyInProgress(Conflict):
    code = "reply_in_progress"
    detail = "A reply to this message is still being produced."


class ReplyAlreadyFinished(Conflict):
    code = "reply_already_finished"
    detail = "The reply has already finished."


class NothingToRetry(BadRequest):
    code = "nothing_to_retry"
    detail = "This reply answers no message of this chatroom."


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
        streams: ReplyStream,
        cache: Cache,
    ) -> None:
        self.session = session
        self.settings = settings
        self.clock = clock
        self.quota = quota
        self.throttle = throttle
        self.pipeline = pipeline
        self.list_cache = list_cache
        self.streams = streams
        self.cache = cache

    async def send(
        self, user: User, room: Chatroom, content: str, idempotency_key: str | None
    ) -> tuple[SendReceipt, QuotaState]:
        """The receipt and the caller's quota after it (a replay spends nothing)."""
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
                quota = await self.quota.state(
                    self.session, user.id, tier_of(user, now, self.settings), now
                )
                return replay, quota
            key_row = replay
        quota = await self._take_slot(user, now)

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
        reply = self._queue_reply(room, user_message, quota, now)
        await self._touch_room(room, added_messages=2, now=now)
        receipt = self._receipt(room, user_message, reply)
        if key_row is not None:
            await self.session.execute(
                update(IdempotencyKey)
                .where(IdempotencyKey.id == key_row)
                .values(receipt=receipt.model_dump_json())
            )
        self._after_commit(user.id, reply)
        return receipt, quota

    async def retry(
        self, user: User, room: Chatroom, message: Message
    ) -> tuple[SendReceipt, QuotaState]:
        """A new reply to the user message that `message` is (or answers)."""
        user_message = message
        if message.role != "user":
            found = await self.session.get(Message, message.reply_to) if message.reply_to else None
            if found is None or found.chatroom_id != room.id:
                raise NothingToRetry()
            user_message = found
        busy = (
            await self.session.execute(
                select(func.count())
                .select_from(Message)
                .where(Message.reply_to == user_message.id, Message.status.in_(ACTIVE_STATES))
            )
        ).scalar_one()
        if busy:
            raise ReplyInProgress()
        now = self.clock.now()
        quota = await self._take_slot(user, now)
        reply = self._queue_reply(room, user_message, quota, now)
        await self._touch_room(room, added_messages=1, now=now)
        self._after_commit(user.id, reply)
        return self._receipt(room, user_message, reply), quota

    async def cancel(self, reply: Message) -> Message:
        """Stop a reply: a queued one is cancelled in this transaction; a generating one is told
        to stop through the shared cache, which the worker producing it (in any process) polls,
        and ends `cancelled` with its partial text."""
        if reply.status in FINAL_STATES:
            if reply.status == CANCELLED:
                return reply
            raise ReplyAlreadyFinished()
        now = self.clock.now()
        cancelled = (
            await self.session.execute(
                update(Message)
                .where(Message.id == reply.id, Message.status == QUEUED)
                .values(status=CANCELLED, error="cancelled", completed_at=now, updated_at=now)
                .returning(Message)
                .execution_options(populate_existing=True)
            )
        ).scalar_one_or_none()
        reply_id, ttl = reply.id, self.settings.reply_stream_ttl_seconds
        if cancelled is not None:
            final = MessageOut.from_row(cancelled).model_dump_json()

            async def announce() -> None:
                await self.streams.append(reply_id, "error", final)
                await self.streams.expire(reply_id, ttl)

            after_commit(self.session, announce)
            return cancelled

        async def signal() -> None:
            await self.cache.set(cancel_key(reply_id), b"1", max(60, ttl))

        after_commit(self.session, signal)
        return reply

    async def _take_slot(self, user: User, now: datetime) -> QuotaState:
        """One slot of today's quota (in this transaction), then the per-minute throttle.

        In that order so that a send refused by the daily limit spends no per-minute slot, and
        one refused by the throttle rolls the quota upsert back with its transaction.
        """
        quota = await self.quota.reserve_daily_slot(
            self.session, user.id, tier_of(user, now, self.settings), now
        )
        try:
            await self.throttle.hit(
                f"{self.settings.send_per_minute}/minute",
                "send",
                str(user.id),
                detail="Too many messages in a minute; slow down.",
            )
        except TooManyRequests:
            QUOTA_REJECTIONS.labels("per_minute").inc()
            raise
        return quota

    async def _touch_room(self, room: Chatroom, *, added_messages: int, now: datetime) -> None:
        await self.session.execute(
            update(Chatroom)
            .where(Chatroom.id == room.id)
            .values(
                message_count=Chatroom.message_count + added_messages,
                last_message_at=now,
                activity_at=now,
                updated_at=now,
            )
        )
        await self.session.flush()

    def _queue_reply(
        self, room: Chatroom, user_message: Message, quota: QuotaState, now: datetime
    ) -> Message:
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
        return reply

    @staticmethod
    def _receipt(room: Chatroom, user_message: Message, reply: Message) -> SendReceipt:
        return SendReceipt(
            message_id=user_message.id,
            reply_id=reply.id,
            stream_url=stream_url(room.id, reply.id),
            user_message=MessageOut.from_row(user_message),
            reply=MessageOut.from_row(reply),
        )

    def _after_commit(self, user_id: int, reply: Message) -> None:
        reply_id = reply.id
        structlog.contextvars.bind_contextvars(reply_id=reply_id)

        async def enqueue() -> None:
            await self.pipeline.enqueue(reply_id)

        async def invalidate() -> None:
            await self.list_cache.invalidate(user_id)

        after_commit(self.session, enqueue)
        after_commit(self.session, invalidate)

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
