"""Sending a message (docs/architecture.md, "The path of a message", step 1).

First the per-minute throttle (Redis in production), before any transaction, so that no row
lock is held across its round trip; its slot is given back when anything later refuses the send
(the daily limit, a room not found, a replay). Then, in one transaction: the room's ownership is
checked and its row locked (every write that adds messages to a room or moves its active leaf
takes it first, so such writes on one room run one after another), the idempotency key is
claimed, the quota slot is taken, the user message (after the room's active leaf, or the
`parent_id` given) and a `queued` reply are inserted, and the room's counters and active leaf
(the new reply) move. The job (the reply id) is enqueued only after the commit, so a
rolled-back request enqueues nothing. Edits and retries are the same steps, with a sibling of
the message edited or a sibling reply.

On PostgreSQL a send without an Idempotency-Key or a `parent_id` is ONE statement (a
data-modifying CTE, chat/repository.py `send_to_owned_room`: the room check and lock, the
slot, the two inserts and the room's counters) run in autocommit on a pooled connection of its
own, on the driver directly (core/sql.py `DriverStatement`), with no ORM session: the room's and
the quota's row locks last the statement and its commit inside PostgreSQL, with no client round
trip (BEGIN, COMMIT) while they are held.
Otherwise, or on SQLite, the steps run in a session of their own (prebuilt Core statements; on
PostgreSQL the slot, inserts and counters are still one statement). The receipt is built from
the values written and the ids returned (the rows hold nothing else the receipt shows).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any

import structlog
from limits import RateLimitItem, parse
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from gemini_backend.attachments.models import Attachment
from gemini_backend.attachments.schemas import attachment_part
from gemini_backend.attachments.service import Attachments
from gemini_backend.auth.principals import SignedInUser
from gemini_backend.chat import repository as repo
from gemini_backend.chat.cache import ChatroomCache
from gemini_backend.chat.errors import (
    ChatroomNotFound,
    MessageNotFound,
    ReplyInProgress,
    found_room,
)
from gemini_backend.chat.models import LIVE_REPLY_INDEX, Message, RoomView
from gemini_backend.chat.queue import ReplyQueue
from gemini_backend.chat.repository import Exchange
from gemini_backend.chat.schemas import MessageOut, SendReceipt, Usage, message_parts
from gemini_backend.chat.service import message_out
from gemini_backend.chat.states import ACTIVE_STATES, FINAL_STATES, ReplyStatus, cancel_key
from gemini_backend.config import Settings
from gemini_backend.core.cache import Cache
from gemini_backend.core.clock import Clock
from gemini_backend.core.db import Database, after_commit, run_after_commit
from gemini_backend.core.errors import BadRequest, Conflict, TooManyRequests, ValidationFailed
from gemini_backend.core.jobs import StreamEntries, kicks_into
from gemini_backend.core.metrics import QUOTA_REJECTIONS
from gemini_backend.core.sql import violates_unique
from gemini_backend.core.streams import ReplyStream
from gemini_backend.core.throttle import Throttle
from gemini_backend.quota.service import Quota, QuotaState
from gemini_backend.users.tier import Tier, tier_of

IDEMPOTENCY_WINDOW = timedelta(hours=24)
MAX_IDEMPOTENCY_KEY = 255


class MessageTooLong(ValidationFailed):
    code = "message_too_long"


class ReplyAlreadyFinished(Conflict):
    code = "reply_already_finished"
    detail = "The reply has already finished."


class NotAUserMessage(BadRequest):
    code = "not_a_user_message"
    detail = "Only a message of yours can be edited; retry a reply to get another version."


class NothingToRetry(BadRequest):
    code = "nothing_to_retry"
    detail = "This reply answers no message of this chatroom."


class InvalidIdempotencyKey(ValidationFailed):
    code = "invalid_idempotency_key"
    detail = f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters."


class IdempotencyKeyReused(ValidationFailed):
    code = "idempotency_key_reused"
    detail = (
        "That Idempotency-Key was used for a different message (another chatroom, text or "
        "parent) in "
        "the last 24 hours; a new message needs a new key."
    )


def stream_url(room_id: int, reply_id: int) -> str:
    return f"/chatroom/{room_id}/messages/{reply_id}/stream"


@cache
def _per_minute(count: int) -> RateLimitItem:
    return parse(f"{count}/minute")


def _no_usage() -> Usage:
    return Usage(prompt_tokens=None, output_tokens=None, thinking_tokens=None, cached_tokens=None)


def _valid_key(key: str) -> bool:
    return 0 < len(key) <= MAX_IDEMPOTENCY_KEY and key.isascii() and key.isprintable()


@dataclass(frozen=True, slots=True)
class _Draft:
    """A message to send: its room, text, the message it follows (None: the active leaf), its
    Idempotency-Key and the attachments sent with it."""

    room_id: int
    content: str
    parent_id: int | None = None
    key: str | None = None
    attachment_ids: tuple[int, ...] = ()


def _sent_attachments(message: MessageOut) -> tuple[int, ...]:
    return tuple(
        part["attachment_id"] for part in message.parts if part.get("type") == "attachment"
    )


def _user_parts(content: str, attachments: Sequence[Attachment]) -> list[dict[str, Any]] | None:
    """The parts of a user message sent with attachments (None: its text is all it is)."""
    if not attachments:
        return None
    return message_parts(content, None) + [attachment_part(row) for row in attachments]


def _check_replay(replay: SendReceipt, draft: _Draft) -> None:
    """A stored receipt answers only a retry of its own send: answering it for another message
    would drop that message without a word (draft-ietf-httpapi-idempotency-key-header)."""
    sent = replay.user_message
    if (
        sent.chatroom_id != draft.room_id
        or sent.content != draft.content
        or (draft.parent_id is not None and sent.parent_id != draft.parent_id)
        or _sent_attachments(sent) != draft.attachment_ids
    ):
        raise IdempotencyKeyReused()


class MessageSender:
    def __init__(
        self,
        *,
        database: Database,
        settings: Settings,
        clock: Clock,
        quota: Quota,
        throttle: Throttle,
        queue: ReplyQueue,
        chatrooms: ChatroomCache,
        streams: ReplyStream,
        cache: Cache,
        statements: repo.ChatStatements,
        attachments: Attachments,
        enqueue_with_invalidation: bool = False,
    ) -> None:
        """`enqueue_with_invalidation`: the queue and the chatroom cache are both on Redis
        (services.py), so a send's job goes in its invalidation's script."""
        self.database = database
        self.sql = statements
        self._announce = (
            self._announce_together if enqueue_with_invalidation else self._announce_apart
        )
        # Chosen once, here: a send without a key is one statement where the database allows.
        self._send_new = (
            self._send_one_statement if statements.one_statement_send else self._send_default
        )
        # Autocommit: the row locks last only the statement, which then runs alone, on the
        # driver. A token reservation must share the slot's transaction, so with a budget
        # configured the statement runs in one, through SQLAlchemy.
        self._alone = not quota.tokens_tracked
        self._one_statement_engine = database.autocommit_engine if self._alone else database.engine
        self.settings = settings
        self.clock = clock
        self.quota = quota
        self.throttle = throttle
        self.queue = queue
        self.chatrooms = chatrooms
        self.streams = streams
        self.cache = cache
        self.attachments = attachments

    async def send(
        self,
        user: SignedInUser,
        room_id: int,
        content: str,
        idempotency_key: str | None,
        parent_id: int | None = None,
        attachment_ids: Sequence[int] = (),
    ) -> tuple[SendReceipt, QuotaState]:
        """The receipt and the caller's quota after it (a replay spends nothing). The new
        message follows `parent_id`, or the room's active leaf; it carries `attachment_ids`."""
        self._check_length(content)
        if idempotency_key is not None and not _valid_key(idempotency_key):
            raise InvalidIdempotencyKey()
        now = self.clock.now()
        tier = tier_of(user, now, self.settings)
        draft = _Draft(room_id, content, parent_id, idempotency_key, tuple(attachment_ids))
        try:
            async with self._per_minute_slot(user.id):
                if idempotency_key is None and parent_id is None and not attachment_ids:
                    sent = await self._send_new(user.id, tier, room_id, content, now)
                else:
                    sent = await self._send_in_session(user.id, tier, draft, now)
        except TooManyRequests:
            # A client retrying a send that went through gets its receipt, full window or not.
            replayed = await self._stored_replay(user.id, tier, draft, now)
            if replayed is None:
                raise
            return replayed
        receipt, quota, reply_id = sent
        if reply_id is None:  # a replay spends nothing and announces nothing
            await self._give_back_slot(user.id)
        else:
            await self._announce(user.id, reply_id)
        return receipt, quota

    async def _stored_replay(
        self, user_id: int, tier: Tier, draft: _Draft, now: datetime
    ) -> tuple[SendReceipt, QuotaState] | None:
        if draft.key is None:
            return None
        async with self.database.sessionmaker() as session:
            stored = await repo.live_receipt(session, user_id, draft.key, now, IDEMPOTENCY_WINDOW)
            if stored is None:
                return None
            replay = SendReceipt.model_validate_json(stored)
            _check_replay(replay, draft)
            return replay, await self.quota.state(session, user_id, tier, now)

    @asynccontextmanager
    async def _per_minute_slot(self, user_id: int) -> AsyncIterator[None]:
        """A slot of the per-minute throttle for the block, given back when the block raises
        (the daily limit or anything else refused the send after the throttle let it by)."""
        try:
            await self.throttle.hit(
                _per_minute(self.settings.send_per_minute),
                "send",
                str(user_id),
                detail="Too many messages in a minute; slow down.",
            )
        except TooManyRequests:
            QUOTA_REJECTIONS.labels("per_minute").inc()
            raise
        try:
            yield
        except Exception:
            await self._give_back_slot(user_id)
            raise

    async def _give_back_slot(self, user_id: int) -> None:
        try:
            await self.throttle.give_back(
                _per_minute(self.settings.send_per_minute), "send", str(user_id)
            )
        except Exception:  # the refusal being answered matters more than one throttle slot
            structlog.get_logger().warning("throttle_give_back_failed", exc_info=True)

    def _check_length(self, content: str) -> None:
        if len(content) > self.settings.max_message_chars:
            raise MessageTooLong(
                f"A message may have at most {self.settings.max_message_chars} characters."
            )

    async def _send_one_statement(
        self, user_id: int, tier: Tier, room_id: int, content: str, now: datetime
    ) -> tuple[SendReceipt, QuotaState, int | None]:
        """PostgreSQL, no key, no parent: a Core connection in autocommit, no ORM session, the
        statement alone (it writes nothing when the slot is refused)."""
        limit = self.quota.limit_for(tier)
        if limit is not None and limit < 1:  # the upsert would take a first slot of the day
            self.quota.admit(None, tier, now)
        async with (
            self._one_statement_engine.connect() as conn,
            nullcontext() if self._alone else conn.begin(),
        ):
            found, exchange = await repo.send_to_owned_room(
                conn,
                self.quota.slot_params(user_id, tier, now),
                user_id=user_id,
                room_id=room_id,
                now=now,
                content=content,
                alone=self._alone,
            )
            if not found:
                raise ChatroomNotFound()
            structlog.contextvars.bind_contextvars(chatroom_id=room_id)
            exchange, quota = await self._admit(conn, exchange, user_id, tier, now)
        return self._send_receipt(room_id, content, exchange, now), quota, exchange.reply_id

    async def _send_default(
        self, user_id: int, tier: Tier, room_id: int, content: str, now: datetime
    ) -> tuple[SendReceipt, QuotaState, int | None]:
        return await self._send_in_session(user_id, tier, _Draft(room_id, content), now)

    async def _send_in_session(
        self, user_id: int, tier: Tier, draft: _Draft, now: datetime
    ) -> tuple[SendReceipt, QuotaState, int | None]:
        """The steps in a session of their own; with a key, a replay answers the stored
        receipt (its reply id None: nothing to announce)."""
        async with self.database.sessionmaker() as session:
            found_room(await repo.owned_room_view(session, user_id, draft.room_id))
            key_row: int | None = None
            if draft.key is not None:
                replay = await self._claim_key(session, user_id, draft.room_id, draft.key, now)
                if isinstance(replay, SendReceipt):
                    _check_replay(replay, draft)
                    quota = await self.quota.state(session, user_id, tier, now)
                    return replay, quota, None
                key_row = replay
            receipt, quota = await self._write_message(session, user_id, tier, draft, now)
            if key_row is not None:
                await repo.store_receipt(session, key_row, receipt.model_dump_json())
            await session.commit()
        return receipt, quota, receipt.reply_id

    async def _write_message(
        self, session: AsyncSession, user_id: int, tier: Tier, draft: _Draft, now: datetime
    ) -> tuple[SendReceipt, QuotaState]:
        """The room locked, the user message after `draft.parent_id` (checked to be in the
        room) or the active leaf, its reply, the slot: the receipt."""
        leaf = await repo.lock_room(session, draft.room_id)
        parent, siblings = leaf, None
        if draft.parent_id is not None:
            if not await repo.message_in_room(session, draft.room_id, draft.parent_id):
                raise MessageNotFound("parent_id names no message of this chatroom.")
            parent = draft.parent_id
        attachments: list[Attachment] = []
        if draft.attachment_ids:
            attachments = await self.attachments.check_for_send(
                session, tier, draft.room_id, draft.attachment_ids
            )
        exchange, quota = await self._take_slot(
            session, user_id, tier, now, draft.room_id, content=draft.content, parent_id=parent
        )
        parts = _user_parts(draft.content, attachments)
        if parts is not None:
            await self.attachments.link(session, attachments, exchange.message_id)
            await repo.set_parts(session, exchange.message_id, parts)
        if draft.parent_id is not None:  # the parent may have other children
            siblings = (await repo.sibling_ids(session, draft.room_id, [parent]))[parent]
        receipt = self._send_receipt(draft.room_id, draft.content, exchange, now, siblings, parts)
        return receipt, quota

    async def edit(
        self,
        session: AsyncSession,
        user: SignedInUser,
        room: RoomView,
        message: Message,
        content: str,
        attachment_ids: Sequence[int] | None = None,
    ) -> tuple[SendReceipt, QuotaState]:
        """A new version of the user message `message`: a sibling with `content` and its
        reply, in the request's session `session`. It keeps the attachments of `message`
        unless `attachment_ids` names its own (Attachments.for_edit)."""
        if message.role != "user":
            raise NotAUserMessage()
        self._check_length(content)
        async with self._per_minute_slot(user.id):
            await repo.lock_room(session, room.id)
            if await repo.replies_in_progress(session, [message.id]):
                raise ReplyInProgress()
            now = self.clock.now()
            tier = tier_of(user, now, self.settings)
            files, kept = await self.attachments.for_edit(
                session, tier, room.id, message.id, attachment_ids
            )
            exchange, quota = await self._take_slot(
                session, user.id, tier, now, room.id, content=content, parent_id=message.parent_id
            )
            parts = None
            if files:
                given = await self.attachments.carry(session, files, kept, exchange.message_id)
                parts = _user_parts(content, given)
                await repo.set_parts(session, exchange.message_id, parts or [])
        siblings = await repo.sibling_ids(session, room.id, [message.parent_id])
        receipt = self._send_receipt(
            room.id, content, exchange, now, siblings[message.parent_id], parts
        )
        self._announce_after_commit(session, user.id, exchange.reply_id)
        return receipt, quota

    async def retry(
        self, session: AsyncSession, user: SignedInUser, room: RoomView, message: Message
    ) -> tuple[SendReceipt, QuotaState]:
        """A new reply to the user message that `message` is (or answers), a sibling of its
        other replies, in the request's session `session`."""
        user_message = message
        if message.role != "user":
            found = await session.get(Message, message.reply_to) if message.reply_to else None
            if found is None or found.chatroom_id != room.id:
                raise NothingToRetry()
            user_message = found
        now = self.clock.now()
        tier = tier_of(user, now, self.settings)
        async with self._per_minute_slot(user.id):
            await repo.lock_room(session, room.id)
            try:
                # No check first: the unique index of replies in progress decides, in the
                # insert itself, so of concurrent retries one wins; the others roll back with
                # their slot.
                exchange, quota = await self._take_slot(
                    session, user.id, tier, now, room.id, reply_to=user_message.id
                )
            except IntegrityError as exc:
                if not violates_unique(exc, LIVE_REPLY_INDEX, "messages.reply_to"):
                    raise
                raise ReplyInProgress() from exc
        self._announce_after_commit(session, user.id, exchange.reply_id)
        shown = await message_out(session, user_message)
        replies = await repo.sibling_ids(session, room.id, [user_message.id])
        receipt = self._receipt(room.id, shown, exchange.reply_id, now, replies[user_message.id])
        return receipt, quota

    def _announce_after_commit(self, session: AsyncSession, user_id: int, reply_id: int) -> None:
        async def announce() -> None:
            await self._announce(user_id, reply_id)

        after_commit(session, announce)

    async def cancel(self, session: AsyncSession, user_id: int, reply: Message) -> Message:
        """Stop a reply: a queued one is cancelled in this transaction; a generating one is told
        to stop through the shared cache, which the worker producing it (in any process) polls,
        and ends `cancelled` with its partial text."""
        if reply.status in FINAL_STATES:
            if reply.status == ReplyStatus.CANCELLED:
                return reply
            raise ReplyAlreadyFinished()
        now = self.clock.now()
        cancelled = (
            await session.execute(
                update(Message)
                .where(Message.id == reply.id, Message.status == ReplyStatus.QUEUED)
                .values(
                    status=ReplyStatus.CANCELLED,
                    error="cancelled",
                    completed_at=now,
                    updated_at=now,
                )
                .returning(Message)
                .execution_options(populate_existing=True)
            )
        ).scalar_one_or_none()
        reply_id, ttl = reply.id, self.settings.reply_stream_ttl_seconds
        if cancelled is not None:
            await self.quota.settle_tokens(session, reply_id, 0)
            final = (await message_out(session, cancelled)).model_dump_json()

            async def announce() -> None:
                await self.chatrooms.room_changed(user_id)
                await self.streams.append(reply_id, "error", final, expire_seconds=ttl)

            after_commit(session, announce)
            return cancelled

        self._stop_after_commit(session, [reply_id])
        return reply

    async def stop_replies_in(self, session: AsyncSession, room_id: int) -> None:
        """The room is being deleted in this transaction: once that commits, the workers
        producing its replies are told to stop, as by a cancel, rather than streaming on (and
        paying the provider) for rows that are gone. Queued replies are flagged too: one
        claimed between this read and the delete would otherwise go unflagged."""
        reply_ids = await repo.room_replies(session, room_id, tuple(ACTIVE_STATES))
        if reply_ids:
            self._stop_after_commit(session, reply_ids)

    async def stop_replies_of(self, session: AsyncSession, user_id: int) -> None:
        """The same for every room of a user whose account is being deleted."""
        reply_ids = await repo.user_replies(session, user_id, tuple(ACTIVE_STATES))
        if reply_ids:
            self._stop_after_commit(session, reply_ids)

    def _stop_after_commit(self, session: AsyncSession, reply_ids: list[int]) -> None:
        """Once this transaction commits, flag the replies in the shared cache: the worker
        producing each one (in any process) polls its flag and stops."""
        ttl = max(60, self.settings.reply_stream_ttl_seconds)

        async def signal() -> None:
            for reply_id in reply_ids:
                await self.cache.set(cancel_key(reply_id), b"1", ttl)

        after_commit(session, signal)

    async def _admit(
        self,
        db: AsyncSession | AsyncConnection,
        exchange: Exchange | None,
        user_id: int,
        tier: Tier,
        now: datetime,
    ) -> tuple[Exchange, QuotaState]:
        """The verdict on a slot just taken (or not), in its transaction (`db`): the daily
        quota, then the monthly token budget (a reservation). A refusal rolls the slot and the
        inserts back with the transaction (and the per-minute slot is given back)."""
        quota = self.quota.admit(exchange.used if exchange is not None else None, tier, now)
        assert exchange is not None  # admit() refused otherwise
        quota = await self.quota.reserve_tokens(db, quota, user_id, tier, exchange.reply_id, now)
        return exchange, quota

    async def _take_slot(
        self,
        session: AsyncSession,
        user_id: int,
        tier: Tier,
        now: datetime,
        room_id: int,
        *,
        content: str | None = None,
        parent_id: int | None = None,
        reply_to: int | None = None,
    ) -> tuple[Exchange, QuotaState]:
        """One slot of today's quota with the exchange it pays for (in `session`'s
        transaction, the room locked; the caller holds a per-minute slot).

        `content`: a new user message after `parent_id` and its reply; else (a retry) a reply
        to `reply_to`. The slot, the inserts and the room's counters are written together
        (repository `insert_exchange`); nothing is inserted when the slot is refused.
        """
        exchange = await self.sql.insert_exchange(
            session,
            self.quota.slot_params(user_id, tier, now),
            room_id=room_id,
            now=now,
            content=content,
            parent_id=parent_id,
            reply_to=reply_to,
        )
        return await self._admit(session, exchange, user_id, tier, now)

    def _send_receipt(
        self,
        room_id: int,
        content: str,
        exchange: Exchange,
        now: datetime,
        siblings: list[int] | None = None,
        parts: list[dict[str, Any]] | None = None,
    ) -> SendReceipt:
        """`siblings`: the user message's, when its parent may have other children (else it
        follows a leaf: it is alone, as its reply is). `parts`: those stored (attachments)."""
        user_message = MessageOut(
            id=exchange.message_id,
            chatroom_id=room_id,
            role="user",
            content=content,
            status=ReplyStatus.COMPLETED,
            error=None,
            finish_reason=None,
            usage=_no_usage(),
            model=None,
            reply_to=None,
            parent_id=exchange.parent_id,
            sibling_ids=siblings or [exchange.message_id],
            parts=message_parts(content, parts),
            created_at=now,
            completed_at=now,
        )
        return self._receipt(room_id, user_message, exchange.reply_id, now)

    @staticmethod
    def _receipt(
        room_id: int,
        user_message: MessageOut,
        reply_id: int,
        now: datetime,
        siblings: list[int] | None = None,
    ) -> SendReceipt:
        reply = MessageOut(
            id=reply_id,
            chatroom_id=room_id,
            role="assistant",
            content="",
            status=ReplyStatus.QUEUED,
            error=None,
            finish_reason=None,
            usage=_no_usage(),
            model=None,
            reply_to=user_message.id,
            parent_id=user_message.id,
            sibling_ids=siblings or [reply_id],
            parts=[],
            created_at=now,
            completed_at=None,
        )
        return SendReceipt(
            message_id=user_message.id,
            reply_id=reply_id,
            stream_url=stream_url(room_id, reply_id),
            user_message=user_message,
            reply=reply,
        )

    async def _announce_apart(self, user_id: int, reply_id: int) -> None:
        """After the commit of a send or retry: the job is enqueued and the user's cached
        chatrooms are invalidated (a failure of either is logged; the sweeper enqueues a
        reply whose job was lost)."""
        structlog.contextvars.bind_contextvars(reply_id=reply_id)

        async def enqueue() -> None:
            await self.queue.enqueue(reply_id)

        async def invalidate() -> None:
            await self.chatrooms.invalidate(user_id)

        await run_after_commit([enqueue, invalidate])

    async def _announce_together(self, user_id: int, reply_id: int) -> None:
        """`_announce_apart` when the jobs and the cache are both on Redis: the job goes in
        the invalidation's script, one round trip."""
        structlog.contextvars.bind_contextvars(reply_id=reply_id)

        async def both() -> None:
            jobs = StreamEntries()
            with kicks_into(jobs):
                await self.queue.enqueue(reply_id)
            await self.chatrooms.invalidate(user_id, along=jobs.items)

        await run_after_commit([both])

    async def _claim_key(
        self, session: AsyncSession, user_id: int, room_id: int, key: str, now: datetime
    ) -> SendReceipt | int:
        """The stored receipt for a key already used, or the id of a fresh key row.

        The unique (user_id, key) row is inserted first: a concurrent request with the same key
        waits on it and then finds the receipt of the one that committed.
        """
        key_id = await repo.claim_idempotency_key(
            session,
            self.sql,
            user_id=user_id,
            room_id=room_id,
            key=key,
            now=now,
            window=IDEMPOTENCY_WINDOW,
        )
        if key_id is not None:
            return key_id
        receipt = await repo.idempotency_receipt(session, user_id, key)
        if receipt is None:  # pragma: no cover - the row is only visible once committed
            raise InvalidIdempotencyKey("That Idempotency-Key is being used by another request.")
        return SendReceipt.model_validate_json(receipt)
