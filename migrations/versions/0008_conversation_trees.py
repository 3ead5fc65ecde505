"""conversation trees: parent_id, parts, active leaf

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIGINT_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

# A linear room becomes one branch in its order. A reply hangs under the user message it
# answers, so replies made by retries are siblings of the first. A user message hangs under
# the newest reply, made before it, to the user message before it (what the user saw when
# sending), or under that user message itself if it had none.
REPLY_PARENTS = """
UPDATE messages SET parent_id = reply_to
WHERE role = 'assistant' AND reply_to IS NOT NULL
"""
USER_PARENTS = """
UPDATE messages SET parent_id = coalesce(
    (SELECT max(r.id) FROM messages AS r
     WHERE r.role = 'assistant' AND r.id < messages.id
       AND r.reply_to = (SELECT max(u.id) FROM messages AS u
                         WHERE u.chatroom_id = messages.chatroom_id AND u.role = 'user'
                           AND u.id < messages.id)),
    (SELECT max(u.id) FROM messages AS u
     WHERE u.chatroom_id = messages.chatroom_id AND u.role = 'user' AND u.id < messages.id))
WHERE role = 'user'
"""
# A reply whose user message is gone (reply_to set null): under the message before it.
ORPHAN_PARENTS = """
UPDATE messages SET parent_id =
    (SELECT max(p.id) FROM messages AS p
     WHERE p.chatroom_id = messages.chatroom_id AND p.id < messages.id)
WHERE role = 'assistant' AND reply_to IS NULL
"""
# The branch shown: the newest reply to the newest user message (the latest version the user
# saw), or the room's newest message.
ACTIVE_LEAVES = """
UPDATE chatrooms SET active_leaf_id = coalesce(
    (SELECT max(r.id) FROM messages AS r
     WHERE r.role = 'assistant'
       AND r.reply_to = (SELECT max(u.id) FROM messages AS u
                         WHERE u.chatroom_id = chatrooms.id AND u.role = 'user')),
    (SELECT max(m.id) FROM messages AS m WHERE m.chatroom_id = chatrooms.id))
"""


def upgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("parent_id", BIGINT_ID, nullable=True))
        batch_op.add_column(sa.Column("parts", sa.JSON(), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_messages_parent_id_messages"),
            "messages",
            ["parent_id"],
            ["id"],
            ondelete="CASCADE",
        )
        batch_op.create_index("ix_messages_parent_id", ["parent_id", "id"], unique=False)
    with op.batch_alter_table("chatrooms", schema=None) as batch_op:
        batch_op.add_column(sa.Column("active_leaf_id", BIGINT_ID, nullable=True))
    for statement in (REPLY_PARENTS, USER_PARENTS, ORPHAN_PARENTS, ACTIVE_LEAVES):
        op.execute(statement)


def downgrade() -> None:
    with op.batch_alter_table("chatrooms", schema=None) as batch_op:
        batch_op.drop_column("active_leaf_id")
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index("ix_messages_parent_id")
        batch_op.drop_constraint(batch_op.f("fk_messages_parent_id_messages"), type_="foreignkey")
        batch_op.drop_column("parts")
        batch_op.drop_column("parent_id")
