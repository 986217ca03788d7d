"""Expand: add organizations.display_label, backfill it in throttled batches, index it
concurrently. Written the way docs/migrations.md asks of every revision on a large table.

Revision ID: zdt_0001
Revises:
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "zdt_0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = ("zdt_test",)
depends_on: str | Sequence[str] | None = "2026_11_25_0001"

BATCH = 500


def upgrade() -> None:
    # Expand: a nullable column without a default is a catalogue change, no table rewrite.
    # lock_timeout keeps the brief ACCESS EXCLUSIVE lock from queueing traffic behind it.
    op.execute("SET LOCAL lock_timeout = '5s'")
    # IF NOT EXISTS: the autocommit block below commits early, so a re-run must be harmless.
    op.execute("ALTER TABLE organizations ADD COLUMN IF NOT EXISTS display_label varchar(200)")
    with op.get_context().autocommit_block():
        connection = op.get_bind()
        # Rows created from now on are written by the application (the dual-write phase);
        # the backfill covers those that existed before, up to a fixed watermark.
        watermark = connection.execute(sa.text("SELECT now()")).scalar_one()
        while True:  # short transactions, throttled for replicas and the cache
            updated = connection.execute(
                sa.text(
                    "UPDATE organizations SET display_label = upper(name) WHERE id IN ("
                    " SELECT id FROM organizations WHERE display_label IS NULL"
                    " AND created_at <= :watermark LIMIT :batch FOR UPDATE SKIP LOCKED)"
                ),
                {"batch": BATCH, "watermark": watermark},
            ).rowcount
            if updated == 0:
                break
            connection.execute(sa.text("SELECT pg_sleep(0.2)"))
        connection.execute(
            sa.text(
                "CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_organizations_display_label"
                " ON organizations (display_label)"
            )
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.get_bind().execute(
            sa.text("DROP INDEX CONCURRENTLY IF EXISTS ix_organizations_display_label")
        )
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute("ALTER TABLE organizations DROP COLUMN IF EXISTS display_label")
