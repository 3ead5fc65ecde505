"""replies in progress by id (claim, heartbeat, finish in a backlog); replies by reply_to

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-02

The claim, the heartbeat and the finish look a reply up by id among the replies in progress
(`id = :reply_id AND status = 'queued'|'generating'`). PostgreSQL's planner took the partial
unique index of the replies in progress (`uq_messages_live_reply`, on `reply_to`) for them,
since its predicate matches and its statistics said it was empty (they are refreshed by VACUUM
and ANALYZE, which a 10-million-row table sees rarely): with 10,000 replies queued each
statement read the whole index, about 5,000 buffers and 15 ms. A partial index on `id` with the
same predicate matches their predicate: one descent of a small index whatever the backlog.

It replaces `ix_messages_status_updated` (status, updated_at), an index of the whole table that
every send, claim and finish added an entry to and that no statement uses any more: the
sweeper's scan, the queue depth and the cancels all ask for replies in progress, which both
partial indexes hold (bench/README.md, issue 22's scale figures).

`messages.reply_to` gets an index of its own (the replies, not the user messages, whose
reply_to is NULL): its foreign key's ON DELETE SET NULL looks up the rows answering each
deleted message, and without an index that was a scan of the whole table per message of a
deleted room or account (a 20,000-message room took 195 s to delete in a 30,000-row table).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

IN_PROGRESS = "status IN ('queued', 'generating')"
ANSWERS = "reply_to IS NOT NULL"


def upgrade() -> None:
    # Plain CREATE/DROP INDEX, not a batch: SQLite needs no table rebuild for them (a rebuild
    # would drop the search triggers of 0015).
    op.create_index(
        "ix_messages_in_progress",
        "messages",
        ["id"],
        postgresql_where=sa.text(IN_PROGRESS),
        sqlite_where=sa.text(IN_PROGRESS),
    )
    op.drop_index("ix_messages_status_updated", table_name="messages")
    op.create_index(
        "ix_messages_reply_to",
        "messages",
        ["reply_to"],
        postgresql_where=sa.text(ANSWERS),
        sqlite_where=sa.text(ANSWERS),
    )


def downgrade() -> None:
    op.drop_index("ix_messages_reply_to", table_name="messages")
    op.create_index("ix_messages_status_updated", "messages", ["status", "updated_at"])
    op.drop_index("ix_messages_in_progress", table_name="messages")
