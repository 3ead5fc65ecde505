"""the monthly token budget: a user's tokens per month and the replies' reservations; an
attachment's bytes shared by the rows of an edit's versions (storage_key no longer unique)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIGINT_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "monthly_tokens",
        sa.Column("user_id", BIGINT_ID, nullable=False),
        sa.Column("month", sa.Date(), nullable=False),
        sa.Column("used", sa.BigInteger(), nullable=False),
        sa.Column("reserved", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_monthly_tokens_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("user_id", "month", name=op.f("pk_monthly_tokens")),
    )
    op.create_table(
        "token_reservations",
        sa.Column("reply_id", BIGINT_ID, nullable=False),
        sa.Column("user_id", BIGINT_ID, nullable=False),
        sa.Column("month", sa.Date(), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["reply_id"],
            ["messages.id"],
            name=op.f("fk_token_reservations_reply_id_messages"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("reply_id", name=op.f("pk_token_reservations")),
    )
    # A batch (a table copy on SQLite): nothing references attachments, so nothing cascades.
    with op.batch_alter_table("attachments", schema=None) as batch_op:
        batch_op.drop_constraint("uq_attachments_storage_key", type_="unique")


def downgrade() -> None:
    # The rows an edit added for the bytes it kept go (their message then lists none): the
    # first row of each object stays.
    op.execute(
        "DELETE FROM attachments WHERE id NOT IN "
        "(SELECT keep FROM (SELECT MIN(id) AS keep FROM attachments GROUP BY storage_key) AS k)"
    )
    with op.batch_alter_table("attachments", schema=None) as batch_op:
        batch_op.create_unique_constraint("uq_attachments_storage_key", ["storage_key"])
    op.drop_table("token_reservations")
    op.drop_table("monthly_tokens")
