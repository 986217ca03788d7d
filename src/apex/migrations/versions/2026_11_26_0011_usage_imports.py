"""Streamed usage imports: their progress, and the verdicts of the lines with a problem.

Revision ID: 2026_11_26_0011
Revises: 2026_11_26_0010
Create Date: 2026-11-26 07:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "2026_11_26_0011"
down_revision: str | None = "2026_11_26_0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "usage_imports",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("created_by_id", sa.Uuid(), nullable=True),
        sa.Column("status", sa.String(length=10), nullable=False),
        *(
            sa.Column(name, sa.BigInteger(), nullable=False)
            for name in ("lines", "accepted", "duplicates", "rejected", "warnings")
        ),
        sa.Column("error", sa.String(length=500), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "status IN ('running', 'succeeded', 'failed')", name=op.f("ck_usage_imports_status")
        ),
        sa.ForeignKeyConstraint(
            ["created_by_id"], ["users.id"],
            name=op.f("fk_usage_imports_created_by_id_users"), ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"], ["organizations.id"],
            name=op.f("fk_usage_imports_organization_id_organizations"), ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_imports")),
    )  # fmt: skip
    with op.batch_alter_table("usage_imports", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_usage_imports_organization_id"), ["organization_id"], unique=False
        )
    op.create_table(
        "usage_import_problems",
        sa.Column("import_id", sa.Uuid(), nullable=False),
        sa.Column("line", sa.BigInteger(), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("verdict", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["import_id"], ["usage_imports.id"],
            name=op.f("fk_usage_import_problems_import_id_usage_imports"), ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"], ["organizations.id"],
            name=op.f("fk_usage_import_problems_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("import_id", "line", name=op.f("pk_usage_import_problems")),
    )  # fmt: skip


def downgrade() -> None:
    op.drop_table("usage_import_problems")
    with op.batch_alter_table("usage_imports", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_usage_imports_organization_id"))
    op.drop_table("usage_imports")
