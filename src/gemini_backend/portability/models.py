from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from gemini_backend.core.db import Base, BigIntId, UTCDateTime


class Share(Base):
    """A public, read-only snapshot of one branch of a room, up to a chosen message.

    The messages are copied (role, content, parts) as JSON when the link is made: later edits,
    retries or a rename never change what the link shows, and the public read is one row by
    its key with no join to anything of the owner."""

    __tablename__ = "shares"
    __table_args__ = (Index("ix_shares_chatroom_id", "chatroom_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # secrets.token_urlsafe
    chatroom_id: Mapped[int] = mapped_column(ForeignKey("chatrooms.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    message_id: Mapped[int] = mapped_column(BigIntId)  # the last message shown
    name: Mapped[str] = mapped_column(String(200))
    messages: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
