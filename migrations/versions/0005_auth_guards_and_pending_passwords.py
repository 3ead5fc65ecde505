"""auth guards per number and per client; passwords pending until the number is proven

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "auth_guards",
        sa.Column("subject", sa.String(length=128), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_failure_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("subject", name=op.f("pk_auth_guards")),
    )
    with op.batch_alter_table("auth_guards", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_auth_guards_last_failure_at"), ["last_failure_at"], unique=False
        )
    # A number's guard keeps its subject (the number itself): running lockouts survive, and
    # their quiet period (the purge's) starts now.
    op.execute(
        "INSERT INTO auth_guards (subject, failures, locked_until, last_failure_at) "
        "SELECT mobile_number, consecutive_failures, locked_until, CURRENT_TIMESTAMP "
        "FROM login_guards"
    )
    op.drop_table("login_guards")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("pending_password_hash", sa.String(length=255), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("pending_password_hash")
    op.create_table(
        "login_guards",
        sa.Column("mobile_number", sa.String(length=20), nullable=False),
        sa.Column("consecutive_failures", sa.Integer(), nullable=False),
        sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("mobile_number", name=op.f("pk_login_guards")),
    )
    op.execute(
        "INSERT INTO login_guards (mobile_number, consecutive_failures, locked_until) "
        "SELECT subject, failures, locked_until FROM auth_guards WHERE length(subject) <= 20"
    )
    op.drop_table("auth_guards")
