"""one live reply per message; purge indexes

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

IN_PROGRESS = "status IN ('queued', 'generating')"
PURGE_INDEXES = [
    ("otp_codes", "expires_at"),
    ("refresh_tokens", "expires_at"),
    ("idempotency_keys", "created_at"),
]


def upgrade() -> None:
    # Replies queued side by side by concurrent retries before the index: the newest of each
    # message's stays in progress, the others end cancelled, so the unique index can be built.
    op.execute(
        """
        UPDATE messages SET status = 'cancelled', error = 'cancelled', completed_at = updated_at
        WHERE status IN ('queued', 'generating') AND reply_to IS NOT NULL
          AND id < (SELECT max(newer.id) FROM messages AS newer
                    WHERE newer.reply_to = messages.reply_to
                      AND newer.status IN ('queued', 'generating'))
        """
    )
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.create_index(
            "uq_messages_live_reply",
            ["reply_to"],
            unique=True,
            postgresql_where=sa.text(IN_PROGRESS),
            sqlite_where=sa.text(IN_PROGRESS),
        )
    # The purge's scans (worker/housekeeping.py).
    for table, column in PURGE_INDEXES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.create_index(batch_op.f(f"ix_{table}_{column}"), [column], unique=False)


def downgrade() -> None:
    for table, column in reversed(PURGE_INDEXES):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_index(batch_op.f(f"ix_{table}_{column}"))
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index("uq_messages_live_reply")
