"""a room's model and generation options

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Existing rooms keep what they had: the default model (null), the model's own sampling
    # and thinking (null), no grounding. Plain ADD COLUMNs, not a batch: on SQLite a batch
    # would copy the table and its drop would cascade to every message.
    op.add_column("chatrooms", sa.Column("model", sa.String(length=100), nullable=True))
    op.add_column("chatrooms", sa.Column("temperature", sa.Float(), nullable=True))
    op.add_column("chatrooms", sa.Column("thinking", sa.String(length=16), nullable=True))
    op.add_column(
        "chatrooms",
        sa.Column("grounding", sa.Boolean(), server_default=sa.false(), nullable=False),
    )


def downgrade() -> None:
    # ALTER TABLE ... DROP COLUMN (SQLite 3.35+), for the same reason.
    for column in ("grounding", "thinking", "temperature", "model"):
        op.drop_column("chatrooms", column)
