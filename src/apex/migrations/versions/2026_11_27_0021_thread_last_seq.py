"""Threads keep the seq of their last message (`last_seq`): a writer takes the next one in
the statement that locks the thread, instead of a lock, a read of the messages, then an
update. No backfill: writers take the larger of `last_seq` and the thread's last stored
message (apex.chat.repository), so the threads of before, and messages written meanwhile by
instances of the previous version, count as they are.

Revision ID: 2026_11_27_0021
Revises: 2026_11_26_0020
Create Date: 2026-11-27 12:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "2026_11_27_0021"
down_revision: str | None = "2026_11_26_0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A constant default: PostgreSQL stores it in the catalogue, no table rewrite. The
    # ALTER's lock is brief, but queued behind a long transaction on a thread it would stop
    # every chat message: give up after 5 s instead (the revision is simply run again).
    if op.get_bind().dialect.name == "postgresql":
        op.execute("SET LOCAL lock_timeout = '5s'")
    with op.batch_alter_table("threads", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "last_seq",
                sa.Integer(),
                server_default="0",
                nullable=False,
                comment="seq of the thread's last message; a writer takes the next by raising it.",
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("threads", schema=None) as batch_op:
        batch_op.drop_column("last_seq")
