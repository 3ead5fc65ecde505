"""The states of a reply, in one place: the schema, the metrics and every query use these.

A reply goes queued, generating, then one of the final states. A StrEnum: the members are the
strings stored in `messages.status`, so a row's status compares equal to them."""

from __future__ import annotations

from enum import StrEnum


class ReplyStatus(StrEnum):
    QUEUED = "queued"
    GENERATING = "generating"
    COMPLETED = "completed"
    FAILED = "failed"
    BLOCKED = "blocked"
    CANCELLED = "cancelled"


FINAL_STATES = frozenset(
    {ReplyStatus.COMPLETED, ReplyStatus.FAILED, ReplyStatus.BLOCKED, ReplyStatus.CANCELLED}
)
ACTIVE_STATES = frozenset({ReplyStatus.QUEUED, ReplyStatus.GENERATING})


def cancel_key(reply_id: int) -> str:
    """The shared-cache flag that tells the worker producing a reply to stop."""
    return f"reply-cancel:{reply_id}"
