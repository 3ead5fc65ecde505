"""the unique index of replies in progress, usable only by lookups by reply_to

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-04

`uq_messages_live_reply` (unique on `reply_to`, over the replies in progress) had the same
predicate as the lookups by id: the claim, the heartbeat, the finish and the sweeper
(`status = 'queued'|'generating'`). With its statistics saying it was empty, PostgreSQL read
the whole index for them, one heap row per entry, filtering on `id`: after 0016 still chosen
over `ix_messages_in_progress` (a tie: both partial indexes are costed as empty), so a claim
during a 10,000-reply backlog read about 1,000 buffers per reply (bench/README.md, issue 22).

Its predicate now also says `reply_to IS NOT NULL`, which no lookup by id states, so none of
them can use it; the lookups by reply_to (a retry's check for a reply in progress, the
uniqueness itself) imply it, since `reply_to = x` is never true for a NULL. Uniqueness is
unchanged: NULLs never conflict in a unique index.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

IN_PROGRESS = "status IN ('queued', 'generating')"
LIVE_ANSWERS = f"reply_to IS NOT NULL AND {IN_PROGRESS}"


def _live_reply_index(predicate: str) -> None:
    # Plain CREATE/DROP INDEX, not a batch: SQLite needs no table rebuild for them (a rebuild
    # would drop the search triggers of 0015).
    op.drop_index("uq_messages_live_reply", table_name="messages")
    op.create_index(
        "uq_messages_live_reply",
        "messages",
        ["reply_to"],
        unique=True,
        postgresql_where=sa.text(predicate),
        sqlite_where=sa.text(predicate),
    )


def upgrade() -> None:
    _live_reply_index(LIVE_ANSWERS)


def downgrade() -> None:
    _live_reply_index(IN_PROGRESS)
