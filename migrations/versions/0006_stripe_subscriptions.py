"""stripe subscriptions: every subscription of a user, not only the latest

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "stripe_subscriptions",
        sa.Column("id", sa.String(length=255), nullable=False),
        sa.Column("user_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("current_period_end", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cancel_at_period_end", sa.Boolean(), nullable=False),
        sa.Column("state_created", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_stripe_subscriptions_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stripe_subscriptions")),
    )
    with op.batch_alter_table("stripe_subscriptions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_stripe_subscriptions_user_id"), ["user_id"], unique=False
        )
    # The subscription each user's row tracked so far is the first one known of them.
    op.execute(
        "INSERT INTO stripe_subscriptions (id, user_id, status, current_period_end, "
        "cancel_at_period_end, state_created, created_at, updated_at) "
        "SELECT stripe_subscription_id, user_id, status, current_period_end, "
        "cancel_at_period_end, state_created, created_at, updated_at FROM subscriptions "
        "WHERE stripe_subscription_id IS NOT NULL"
    )


def downgrade() -> None:
    with op.batch_alter_table("stripe_subscriptions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_stripe_subscriptions_user_id"))
    op.drop_table("stripe_subscriptions")
