from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from gemini_backend.core.db import Base, BigIntId, UTCDateTime

PENDING = "pending"  # the row is written before the bytes: an upload in progress (or dead)
STORED = "stored"


class Attachment(Base):
    __tablename__ = "attachments"
    __table_args__ = (
        Index("ix_attachments_chatroom_id", "chatroom_id", "id"),
        # A reply's claim reads the attachments of its conversation's messages.
        Index("ix_attachments_message_id", "message_id"),
        # The purge's scan for uploads that never finished.
        Index("ix_attachments_state_created", "state", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    chatroom_id: Mapped[int] = mapped_column(ForeignKey("chatrooms.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    # The user message it was sent with (None: uploaded, not sent yet).
    message_id: Mapped[int | None] = mapped_column(ForeignKey("messages.id", ondelete="SET NULL"))
    filename: Mapped[str] = mapped_column(String(255))
    media_type: Mapped[str] = mapped_column(String(100))
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    sha256: Mapped[str] = mapped_column(String(64), default="")
    # Not unique: an edit that keeps a message's attachments gives its new version rows of its
    # own naming the same bytes (deleted with the room, once).
    storage_key: Mapped[str] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class StorageDeletion(Base):
    """A stored object to delete: written in the transaction that drops its rows (a room or an
    account deleted), removed once the object is gone. A crash between the commit and the
    storage call leaves the row, and the purge deletes the object later: never an orphan."""

    __tablename__ = "storage_deletions"

    storage_key: Mapped[str] = mapped_column(String(255), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
