"""one live reply per message; purge indexes

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

IN_PROGRESS = "status IN ('queued', 'generating')"


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


def downgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index("uq_messages_live_reply")
