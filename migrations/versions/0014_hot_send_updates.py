"""rows a send updates stay HOT: no index on a room's activity, fillfactor on the counters

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-02
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Every send moves its room's activity_at and its user's daily_usage count. An index on a
# changed column forbids PostgreSQL's in-place (HOT) update, which also needs free room on the
# row's page: the list's index becomes the user's rooms alone (sorted when read), and both
# tables keep a quarter of each page free.
FILLFACTOR = {"chatrooms": 75, "daily_usage": 75}


def _set_fillfactor(table: str, value: int | None) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return  # SQLite has no storage parameters
    if value is None:
        op.execute(f"ALTER TABLE {table} RESET (fillfactor)")
    else:
        op.execute(f"ALTER TABLE {table} SET (fillfactor = {value})")


def upgrade() -> None:
    op.create_index("ix_chatrooms_user_id", "chatrooms", ["user_id"])
    op.drop_index("ix_chatrooms_user_activity", table_name="chatrooms")
    for table, value in FILLFACTOR.items():
        _set_fillfactor(table, value)


def downgrade() -> None:
    for table in FILLFACTOR:
        _set_fillfactor(table, None)
    op.create_index("ix_chatrooms_user_activity", "chatrooms", ["user_id", "activity_at", "id"])
    op.drop_index("ix_chatrooms_user_id", table_name="chatrooms")
