"""A revision that fails half way: its table must not survive, and the schema must stay at
zdt_0001.

Revision ID: zdt_0002
Revises: zdt_0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "zdt_0002"
down_revision: str | None = "zdt_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table("zdt_half_done", sa.Column("id", sa.Integer, primary_key=True))
    op.execute("ALTER TABLE organizations ALTER COLUMN display_label SET NOT NULL")
    op.execute("SELECT 1 / 0")  # fails after two changes that must be rolled back


def downgrade() -> None:
    op.drop_table("zdt_half_done")
