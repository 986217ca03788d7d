"""Usage records of a model nobody has a price for are kept (cost_source 'unpriced').

Widening a CHECK: on PostgreSQL the new constraint is added NOT VALID and validated
separately, so no long exclusive lock is held while rows are checked.

Revision ID: 2026_11_26_0008
Revises: 2026_11_25_0007
Create Date: 2026-11-26 00:10:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "2026_11_26_0008"
down_revision: str | None = "2026_11_25_0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NAME = "ck_usage_records_cost_source"
WIDE = "cost_source IN ('reported', 'catalogue', 'unpriced')"
NARROW = "cost_source IN ('reported', 'catalogue')"


def _replace_check(condition: str) -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER TABLE usage_records DROP CONSTRAINT {NAME}")
        op.execute(f"ALTER TABLE usage_records ADD CONSTRAINT {NAME} CHECK ({condition}) NOT VALID")
        op.execute(f"ALTER TABLE usage_records VALIDATE CONSTRAINT {NAME}")
        return
    with op.batch_alter_table("usage_records", recreate="always") as batch:
        batch.drop_constraint(op.f(NAME), type_="check")
        batch.create_check_constraint("cost_source", condition)


def upgrade() -> None:
    _replace_check(WIDE)


def downgrade() -> None:
    op.execute("DELETE FROM usage_records WHERE cost_source = 'unpriced'")
    _replace_check(NARROW)
