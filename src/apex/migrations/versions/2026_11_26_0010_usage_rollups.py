"""Usage rollups: hourly aggregates the analyses and the meter read instead of raw records.

Created empty, then filled from the existing records by one INSERT … SELECT per table (the
SQL is frozen here, as a migration must be; `apex usage rebuild-rollups` recomputes them with
the application's current definition). From this revision on, ingestion keeps them in the
same transaction as the records.

Revision ID: 2026_11_26_0010
Revises: 2026_11_26_0009
Create Date: 2026-11-26 06:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "2026_11_26_0010"
down_revision: str | None = "2026_11_26_0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEY_COLUMNS = {
    "workload": 100,
    "provider": 50,
    "model": 100,
}
FIT_SUMS = ("ii", "ir", "io", "rr", "ro", "oo", "ic", "rc", "oc", "cc")
BIG = (
    "calls", "input_tokens", "cached_input_tokens", "cache_write_tokens", "output_tokens",
    "reasoning_tokens", "cost_nanos", "calls_with_end_user", "calls_with_latency",
    "latency_ms_sum", "latency_ms_max", "max_prompt_tokens", "max_output_tokens",
)  # fmt: skip


def _organization() -> list[sa.Column[object]]:
    return [sa.Column("organization_id", sa.Uuid(), nullable=False)]


def _keys() -> list[sa.Column[object]]:
    return [
        sa.Column(name, sa.String(length), nullable=False) for name, length in KEY_COLUMNS.items()
    ]


def _fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["organization_id"], ["organizations.id"],
        name=op.f(f"fk_{table}_organization_id_organizations"), ondelete="CASCADE",
    )  # fmt: skip


def _create_tables() -> None:
    op.create_table(
        "usage_rollups",
        *_organization(),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        *_keys(),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("cost_source", sa.String(length=10), nullable=False),
        *(sa.Column(name, sa.BigInteger(), nullable=False) for name in BIG),
        sa.Column("first_record_id", sa.String(length=200), nullable=False),
        sa.Column("last_record_id", sa.String(length=200), nullable=False),
        *(sa.Column(f"fit_{s}", sa.Double(), nullable=False) for s in ("c", *FIT_SUMS)),
        _fk("usage_rollups"),
        sa.PrimaryKeyConstraint(
            "organization_id",
            "hour",
            "workload",
            "provider",
            "model",
            "status",
            "cost_source",
            name=op.f("pk_usage_rollups"),
        ),
    )
    op.create_table(
        "usage_hash_rollups",
        *_organization(),
        sa.Column("kind", sa.String(length=10), nullable=False),
        *_keys(),
        sa.Column("hash", sa.String(length=128), nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        *(
            sa.Column(n, sa.BigInteger(), nullable=False)
            for n in ("calls", "cost_nanos", "prefix_tokens")
        ),
        sa.Column("first_record_id", sa.String(length=200), nullable=False),
        sa.Column("last_record_id", sa.String(length=200), nullable=False),
        _fk("usage_hash_rollups"),
        sa.PrimaryKeyConstraint(
            "organization_id",
            "kind",
            "workload",
            "provider",
            "model",
            "hash",
            "hour",
            name=op.f("pk_usage_hash_rollups"),
        ),
    )
    op.create_table(
        "usage_hash_totals",
        *_organization(),
        sa.Column("kind", sa.String(length=10), nullable=False),
        *_keys(),
        sa.Column("hash", sa.String(length=128), nullable=False),
        *(
            sa.Column(n, sa.BigInteger(), nullable=False)
            for n in ("calls", "cost_nanos", "prefix_tokens")
        ),
        sa.Column("first_record_id", sa.String(length=200), nullable=False),
        sa.Column("last_record_id", sa.String(length=200), nullable=False),
        sa.Column("first_hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_hour", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("kind IN ('prompt', 'prefix')", name=op.f("ck_usage_hash_totals_kind")),
        _fk("usage_hash_totals"),
        sa.PrimaryKeyConstraint(
            "organization_id",
            "kind",
            "workload",
            "provider",
            "model",
            "hash",
            name=op.f("pk_usage_hash_totals"),
        ),
    )
    op.create_index(
        "ix_usage_hash_totals_repeated", "usage_hash_totals", ["organization_id", "kind"],
        postgresql_where=sa.text("calls >= 2"), sqlite_where=sa.text("calls >= 2"),
    )  # fmt: skip


def _hour(dialect: str) -> str:
    if dialect == "postgresql":
        return "(date_trunc('hour', occurred_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC')"
    return "(substr(occurred_at, 1, 13) || ':00:00.000000')"


def _backfill(dialect: str) -> None:
    hour = _hour(dialect)
    f = {
        "i": "CAST(input_tokens + cache_write_tokens AS DOUBLE PRECISION)",
        "r": "CAST(cached_input_tokens AS DOUBLE PRECISION)",
        "o": "CAST(output_tokens + reasoning_tokens AS DOUBLE PRECISION)",
        "c": "CAST(cost_nanos AS DOUBLE PRECISION)",
    }
    fits = ", ".join(f"sum({f[s[0]]} * {f[s[1]]})" for s in FIT_SUMS)
    op.execute(
        f"INSERT INTO usage_rollups (organization_id, hour, workload, provider, model, status, "  # noqa: S608
        f"cost_source, {', '.join(BIG)}, first_record_id, last_record_id, fit_c, "
        f"{', '.join('fit_' + s for s in FIT_SUMS)}) "
        f"SELECT organization_id, {hour}, workload, provider, model, status, cost_source, "
        "count(*), sum(input_tokens), sum(cached_input_tokens), sum(cache_write_tokens), "
        "sum(output_tokens), sum(reasoning_tokens), sum(cost_nanos), count(end_user), "
        "count(latency_ms), coalesce(sum(latency_ms), 0), coalesce(max(latency_ms), 0), "
        "max(input_tokens + cached_input_tokens + cache_write_tokens), "
        "max(output_tokens + reasoning_tokens), min(record_id), max(record_id), "
        f"sum({f['c']}), {fits} "
        "FROM usage_records GROUP BY 1, 2, 3, 4, 5, 6, 7"
    )
    kinds = {
        "prompt": ("prompt_hash", "prompt_hash IS NOT NULL AND status = 'ok' "
                   "AND cost_source <> 'unpriced'"),
        "prefix": ("prefix_hash", "prefix_hash IS NOT NULL AND cached_input_tokens = 0 "
                   "AND cache_write_tokens = 0"),
    }  # fmt: skip
    for kind, (column, where) in kinds.items():
        op.execute(
            "INSERT INTO usage_hash_rollups (organization_id, kind, workload, provider, model, "  # noqa: S608
            "hash, hour, calls, cost_nanos, prefix_tokens, first_record_id, last_record_id) "
            f"SELECT organization_id, '{kind}', workload, provider, model, {column}, {hour}, "
            "count(*), sum(cost_nanos), sum(prefix_tokens), min(record_id), max(record_id) "
            f"FROM usage_records WHERE {where} GROUP BY 1, 2, 3, 4, 5, 6, 7"
        )
        op.execute(
            "INSERT INTO usage_hash_totals (organization_id, kind, workload, provider, model, "  # noqa: S608
            "hash, calls, cost_nanos, prefix_tokens, first_record_id, last_record_id, "
            f"first_hour, last_hour) SELECT organization_id, '{kind}', workload, provider, "
            f"model, {column}, count(*), sum(cost_nanos), sum(prefix_tokens), min(record_id), "
            f"max(record_id), min({hour}), max({hour}) FROM usage_records WHERE {where} "
            "GROUP BY 1, 2, 3, 4, 5, 6"
        )


def upgrade() -> None:
    _create_tables()
    _backfill(op.get_bind().dialect.name)


def downgrade() -> None:
    op.drop_index("ix_usage_hash_totals_repeated", table_name="usage_hash_totals")
    for table in ("usage_hash_totals", "usage_hash_rollups", "usage_rollups"):
        op.drop_table(table)
