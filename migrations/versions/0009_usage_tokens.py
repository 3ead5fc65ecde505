"""usage tokens: messages.cached_tokens; replies per quota day

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

HAS_QUOTA_DAY = "quota_day IS NOT NULL"


def upgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("cached_tokens", sa.Integer(), nullable=True))
        # GET /user/usage/history: a user's replies per quota day, through their rooms.
        batch_op.create_index(
            "ix_messages_usage_day",
            ["chatroom_id", "quota_day"],
            unique=False,
            postgresql_where=sa.text(HAS_QUOTA_DAY),
            sqlite_where=sa.text(HAS_QUOTA_DAY),
        )


def downgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index("ix_messages_usage_day")
        batch_op.drop_column("cached_tokens")
