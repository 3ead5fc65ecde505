"""share links; stored objects waiting to be deleted; ids never reused on SQLite

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIGINT_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


# An access token names a user id and a session id, and a reply's stream and cancel flag its
# message id. Once an account (its newest rows) can be deleted, SQLite, which gives a new row
# the largest id + 1, would hand those ids out again: the deleted account's unexpired tokens
# would open the next account, a new reply would find the old one's stream. AUTOINCREMENT
# never reuses an id; PostgreSQL's sequences never do.
NEVER_REUSED = ("users", "auth_sessions", "chatrooms", "messages")


def _sqlite_autoincrement(on: bool) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for table in NEVER_REUSED:
        with op.batch_alter_table(
            table, recreate="always", table_kwargs={"sqlite_autoincrement": on}
        ):
            pass


def upgrade() -> None:
    _sqlite_autoincrement(True)
    op.create_table(
        "shares",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("chatroom_id", BIGINT_ID, nullable=False),
        sa.Column("user_id", BIGINT_ID, nullable=False),
        sa.Column("message_id", BIGINT_ID, nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("messages", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["chatroom_id"],
            ["chatrooms.id"],
            name=op.f("fk_shares_chatroom_id_chatrooms"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_shares_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_shares")),
    )
    op.create_index("ix_shares_chatroom_id", "shares", ["chatroom_id", "created_at"])
    op.create_index(op.f("ix_shares_user_id"), "shares", ["user_id"])
    op.create_table(
        "storage_deletions",
        sa.Column("storage_key", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("storage_key", name=op.f("pk_storage_deletions")),
    )
    op.create_index(op.f("ix_storage_deletions_created_at"), "storage_deletions", ["created_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_storage_deletions_created_at"), table_name="storage_deletions")
    op.drop_table("storage_deletions")
    op.drop_index(op.f("ix_shares_user_id"), table_name="shares")
    op.drop_index("ix_shares_chatroom_id", table_name="shares")
    op.drop_table("shares")
    _sqlite_autoincrement(False)
