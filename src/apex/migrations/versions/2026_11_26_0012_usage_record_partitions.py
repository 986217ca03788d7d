"""Usage records: the dedup key in its own table, a retention class per record, and on
PostgreSQL monthly partitions (each split by retention class) instead of one table.

The conversion is online on PostgreSQL (docs/migrations.md, "Partitioning usage_records"):
the existing table becomes the partition `usage_records_legacy` of everything before the
end of the current month, attached without a scan (a CHECK constraint validated first,
while the table stays writable), and without copying a row. Writers wait only while the
record ids are copied into `usage_record_ids`; readers wait only for the final renames.

Revision ID: 2026_11_26_0012
Revises: 2026_11_26_0011
Create Date: 2026-11-26 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "2026_11_26_0012"
down_revision: str | None = "2026_11_26_0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LEGACY = "usage_records_legacy"
INDEX = "ix_usage_records_organization_id_occurred_at"
FK = "fk_usage_records_organization_id_organizations"
BOUND = "ck_usage_records_legacy_bound"


def _create_id_table() -> None:
    op.create_table(
        "usage_record_ids",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("record_id", sa.String(length=200), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"], ["organizations.id"],
            name=op.f("fk_usage_record_ids_organization_id_organizations"), ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("organization_id", "record_id", name=op.f("pk_usage_record_ids")),
    )  # fmt: skip


_COPY_IDS = (
    "INSERT INTO usage_record_ids (organization_id, record_id, occurred_at) "
    "SELECT organization_id, record_id, occurred_at FROM usage_records"
)
# The ids of the records stored while the first copy ran (an anti-join: no write lock was
# held then, so which ones they are is not known).
_COPY_NEW_IDS = (
    "INSERT INTO usage_record_ids (organization_id, record_id, occurred_at) "
    "SELECT r.organization_id, r.record_id, r.occurred_at FROM usage_records r "
    "WHERE NOT EXISTS (SELECT FROM usage_record_ids i "
    "WHERE i.organization_id = r.organization_id AND i.record_id = r.record_id)"
)


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _upgrade_postgresql()
        return
    _create_id_table()
    op.execute(_COPY_IDS)  # SQLite: one writer at a time
    with op.batch_alter_table("usage_records", recreate="always") as batch:
        batch.drop_constraint("uq_usage_records_organization_id_record_id", type_="unique")
        batch.add_column(
            sa.Column("retention_days", sa.SmallInteger(), nullable=False, server_default="0")
        )


def _upgrade_postgresql() -> None:
    bind = op.get_bind()
    if not bind.execute(sa.text("SELECT EXISTS (SELECT FROM usage_records)")).scalar_one():
        _replace_empty_table()
        return
    # Each statement of this block commits on its own, holding its lock for an instant; a
    # run that failed later in the revision finds them done and goes on (re-runnable).
    with op.get_context().autocommit_block():
        op.execute("SET lock_timeout = '5s'")
        if not sa.inspect(bind).has_table("usage_record_ids"):
            _create_id_table()
        op.execute(
            "ALTER TABLE usage_records ADD COLUMN IF NOT EXISTS "
            "retention_days smallint NOT NULL DEFAULT 0"
        )
        op.execute(f"ALTER TABLE usage_records DROP CONSTRAINT IF EXISTS {BOUND}")
        bound = bind.execute(
            sa.text(
                "SELECT (date_trunc('month', greatest(max(occurred_at), now()) AT TIME ZONE 'UTC')"
                " + interval '1 month') AT TIME ZONE 'UTC' FROM usage_records"
            )
        ).scalar_one()
        op.execute(
            f"ALTER TABLE usage_records ADD CONSTRAINT {BOUND} "
            f"CHECK (occurred_at < '{bound.isoformat()}') NOT VALID"
        )
        op.execute(f"ALTER TABLE usage_records VALIDATE CONSTRAINT {BOUND}")  # no write lock
        op.execute("RESET lock_timeout")
        op.execute("TRUNCATE usage_record_ids")  # a failed run's copy
        op.execute(_COPY_IDS)  # while ingestion goes on
    # One transaction from here: writers wait while the ids of what they stored meanwhile
    # are copied, readers do not.
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute("LOCK TABLE usage_records IN SHARE MODE")
    op.execute(_COPY_NEW_IDS)
    op.execute(f"ALTER INDEX {INDEX} RENAME TO {LEGACY}_organization_id_occurred_at")
    op.execute(f"ALTER TABLE usage_records RENAME TO {LEGACY}")
    op.execute(
        f"CREATE TABLE usage_records (LIKE {LEGACY} INCLUDING DEFAULTS INCLUDING CONSTRAINTS) "
        "PARTITION BY RANGE (occurred_at)"
    )
    op.execute(f"ALTER TABLE usage_records DROP CONSTRAINT {BOUND}")
    op.execute(
        f"ALTER TABLE usage_records ADD CONSTRAINT {FK} FOREIGN KEY (organization_id) "
        "REFERENCES organizations (id) ON DELETE CASCADE"
    )
    op.execute(f"CREATE INDEX {INDEX} ON usage_records (organization_id, occurred_at)")
    # The validated CHECK proves the partition bound: no scan. Its own FK and index match
    # the parent's and are attached, not rebuilt.
    op.execute(
        f"ALTER TABLE usage_records ATTACH PARTITION {LEGACY} "
        f"FOR VALUES FROM (MINVALUE) TO ('{bound.isoformat()}')"
    )
    op.execute(f"ALTER TABLE {LEGACY} DROP CONSTRAINT {BOUND}")
    op.execute(f"ALTER TABLE {LEGACY} DROP CONSTRAINT uq_usage_records_organization_id_record_id")


def _replace_empty_table() -> None:
    """A new installation (no record yet): the partitioned table from the start."""
    _create_id_table()
    op.execute("LOCK TABLE usage_records IN ACCESS EXCLUSIVE MODE")
    op.execute(f"ALTER TABLE usage_records RENAME TO {LEGACY}")
    op.execute(f"ALTER INDEX {INDEX} RENAME TO {LEGACY}_organization_id_occurred_at")
    op.execute(
        f"CREATE TABLE usage_records (LIKE {LEGACY} INCLUDING DEFAULTS INCLUDING CONSTRAINTS, "
        "retention_days smallint NOT NULL DEFAULT 0) PARTITION BY RANGE (occurred_at)"
    )
    op.execute(f"DROP TABLE {LEGACY}")
    op.execute(
        f"ALTER TABLE usage_records ADD CONSTRAINT {FK} FOREIGN KEY (organization_id) "
        "REFERENCES organizations (id) ON DELETE CASCADE"
    )
    op.execute(f"CREATE INDEX {INDEX} ON usage_records (organization_id, occurred_at)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _downgrade_postgresql()
    else:
        with op.batch_alter_table("usage_records", recreate="always") as batch:
            batch.drop_column("retention_days")
            batch.create_unique_constraint(
                "uq_usage_records_organization_id_record_id", ["organization_id", "record_id"]
            )
    op.drop_table("usage_record_ids")


def _downgrade_postgresql() -> None:
    """Back to one table: the records are copied (the reverse is not online)."""
    op.execute("ALTER TABLE usage_records RENAME TO usage_records_partitioned")
    op.execute(f"ALTER INDEX {INDEX} RENAME TO usage_records_partitioned_occurred_at")
    op.execute(
        "CREATE TABLE usage_records (LIKE usage_records_partitioned "
        "INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
    )
    op.execute("INSERT INTO usage_records SELECT * FROM usage_records_partitioned")
    op.execute("DROP TABLE usage_records_partitioned CASCADE")
    op.execute("ALTER TABLE usage_records DROP COLUMN retention_days")
    op.execute("ALTER TABLE usage_records ADD CONSTRAINT pk_usage_records PRIMARY KEY (id)")
    op.execute(
        "ALTER TABLE usage_records ADD CONSTRAINT uq_usage_records_organization_id_record_id "
        "UNIQUE (organization_id, record_id)"
    )
    op.execute(
        f"ALTER TABLE usage_records ADD CONSTRAINT {FK} FOREIGN KEY (organization_id) "
        "REFERENCES organizations (id) ON DELETE CASCADE"
    )
    op.execute(f"CREATE INDEX {INDEX} ON usage_records (organization_id, occurred_at)")
