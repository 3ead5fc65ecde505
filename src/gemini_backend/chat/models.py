from __future__ import annotations

from datetime import date, datetime
from typing import Any, Protocol

from sqlalchemy import (
    JSON,
    Boolean,
    Date,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from gemini_backend.chat.states import ReplyStatus
from gemini_backend.core.db import Base, BigIntId, UTCDateTime

DEFAULT_ROOM_NAME = "New chat"
# The states of a reply still to finish (chat.states.ACTIVE_STATES), as SQL.
_IN_PROGRESS = text(f"status IN ('{ReplyStatus.QUEUED}', '{ReplyStatus.GENERATING}')")
_HAS_QUOTA_DAY = text("quota_day IS NOT NULL")
_ANSWERS = text("reply_to IS NOT NULL")
# The replies in progress as only a lookup by reply_to implies (migration 0017): a lookup by
# id, which states _IN_PROGRESS, cannot take the unique index for a scan of all of it.
_LIVE_ANSWERS = text(f"reply_to IS NOT NULL AND {_IN_PROGRESS.text}")
LIVE_REPLY_INDEX = "uq_messages_live_reply"


class Chatroom(Base):
    __tablename__ = "chatrooms"
    __table_args__ = (
        # The list: a user's rooms (at most MAX_CHATROOMS_PER_USER), sorted by activity when
        # read. No index holds activity_at: every send moves it, and an index on a changed
        # column forbids the in-place (HOT) update that keeps a send storm from bloating the
        # table; a quarter of each page is kept free for those updates (migration 0014).
        Index("ix_chatrooms_user_id", "user_id"),
        # SQLite: a deleted room's id is never given to another (migration 0013).
        {"postgresql_with": {"fillfactor": 75}, "sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    # True while the name is the placeholder: the first exchange may give the room a title.
    auto_title: Mapped[bool] = mapped_column(Boolean, default=False)
    system_prompt: Mapped[str | None] = mapped_column(Text)
    message_count: Mapped[int] = mapped_column(Integer, default=0)
    last_message_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # last_message_at, or created_at for a room without messages: the list's sort key.
    activity_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # The last message of the conversation shown (the tree's active branch ends here); no
    # foreign key: the room and its messages go together, and a send only moves it.
    active_leaf_id: Mapped[int | None] = mapped_column(BigIntId)
    # The room's model (a catalogue id; None: the default model) and its generation options
    # (None: the model's own default). `thinking`: off, low, medium, high or a token budget
    # written as digits (chat/options.py reads it back).
    model: Mapped[str | None] = mapped_column(String(100))
    temperature: Mapped[float | None] = mapped_column(Float)
    thinking: Mapped[str | None] = mapped_column(String(16))
    grounding: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class RoomView(Protocol):
    """A chatroom as read (an ORM object, or a plain row where nothing changes it)."""

    @property
    def id(self) -> int: ...
    @property
    def user_id(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def auto_title(self) -> bool: ...
    @property
    def system_prompt(self) -> str | None: ...
    @property
    def message_count(self) -> int: ...
    @property
    def last_message_at(self) -> datetime | None: ...
    @property
    def activity_at(self) -> datetime: ...
    @property
    def active_leaf_id(self) -> int | None: ...
    @property
    def model(self) -> str | None: ...
    @property
    def temperature(self) -> float | None: ...
    @property
    def thinking(self) -> str | None: ...
    @property
    def grounding(self) -> bool: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def updated_at(self) -> datetime: ...


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (
        Index("ix_messages_chatroom_id", "chatroom_id", "id"),
        # A message's children: sibling lists and the walk down to a branch's leaf.
        Index("ix_messages_parent_id", "parent_id", "id"),
        # A user's replies per quota day (GET /user/usage/history), through their rooms.
        Index(
            "ix_messages_usage_day",
            "chatroom_id",
            "quota_day",
            postgresql_where=_HAS_QUOTA_DAY,
            sqlite_where=_HAS_QUOTA_DAY,
        ),
        # The replies in progress by id: the claim, heartbeat and finish of one reply, and the
        # sweeper's scan (migrations 0016, 0017): the one partial index their predicate implies.
        Index(
            "ix_messages_in_progress",
            "id",
            postgresql_where=_IN_PROGRESS,
            sqlite_where=_IN_PROGRESS,
        ),
        # The replies to a message: its foreign key's ON DELETE SET NULL finds them when a room
        # or an account is deleted (without it, a scan of the table per deleted message).
        Index("ix_messages_reply_to", "reply_to", postgresql_where=_ANSWERS, sqlite_where=_ANSWERS),
        # At most one reply in progress per user message: of concurrent retries, the database
        # lets one insert through (sending.py turns the others into 409 reply_in_progress).
        Index(
            LIVE_REPLY_INDEX,
            "reply_to",
            unique=True,
            postgresql_where=_LIVE_ANSWERS,
            sqlite_where=_LIVE_ANSWERS,
        ),
        # SQLite: a deleted message's id (its reply stream, its cancel flag) is never reused.
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    chatroom_id: Mapped[int] = mapped_column(ForeignKey("chatrooms.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(16))  # user | assistant
    content: Mapped[str] = mapped_column(Text, default="")
    # user messages: completed; replies: queued -> generating -> completed|failed|blocked|cancelled
    status: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(String(64))
    finish_reason: Mapped[str | None] = mapped_column(String(32))
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    output_tokens: Mapped[int | None] = mapped_column(Integer)
    thinking_tokens: Mapped[int | None] = mapped_column(Integer)
    cached_tokens: Mapped[int | None] = mapped_column(Integer)  # of the prompt, from a cache
    model: Mapped[str | None] = mapped_column(String(100))
    reply_to: Mapped[int | None] = mapped_column(ForeignKey("messages.id", ondelete="SET NULL"))
    # The message this one follows in the conversation tree (None: a root). A reply's parent
    # is the user message it answers.
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))
    # The message's parts as a JSON list (its text, next attachments, thoughts, citations);
    # None: the message is its text alone (`content`), as every message is today.
    parts: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # The quota day whose slot this reply holds (given back if it fails or is blocked).
    quota_day: Mapped[date | None] = mapped_column(Date)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class IdempotencyKey(Base):
    """A send made with an `Idempotency-Key`: the same key (per user, 24 h) returns this receipt."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("user_id", "key"),)

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(255))
    chatroom_id: Mapped[int] = mapped_column(BigIntId)
    receipt: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)  # for the purge
