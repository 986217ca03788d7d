"""Migrations are the schema: upgrade, downgrade and upgrade again on PostgreSQL and SQLite,
through the real `apex migrate` command."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, inspect, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import create_async_engine

from apex.migrations.runner import head_revision
from apex.models import metadata
from apex.settings import normalise_database_url
from tests.integration.conftest import migrate, run_apex

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
CORE_TABLES = {
    "organizations",
    "users",
    "memberships",
    "threads",
    "messages",
    "outbox_messages",
    "signing_keys",
    "refresh_tokens",
    "api_keys",
    "invitations",
    "usage_records",
    "price_overrides",
    "agent_runs",
    "agent_steps",
    "email_tokens",
    "usage_rollups",
    "usage_hash_rollups",
    "usage_hash_totals",
    "usage_imports",
    "usage_import_problems",
    "usage_record_ids",
    "subscriptions",
    "subscription_events",
    "invoices",
    "invoice_lines",
    "payments",
    "gateway_events",
    "findings",
    "savings_measurements",
    "refunds",
    "audit_records",
    "alert_rules",
    "alert_events",
    "alert_deliveries",
    "telemetry_points",
}


def _run(url: str, fn: Any) -> Any:
    """Run `fn(sync_connection)` in one committed transaction on `url`."""

    async def go() -> Any:
        engine = create_async_engine(normalise_database_url(url))
        try:
            async with engine.begin() as connection:
                if connection.dialect.name == "sqlite":
                    await connection.exec_driver_sql("PRAGMA foreign_keys=ON")
                return await connection.run_sync(fn)
        finally:
            await engine.dispose()

    return asyncio.run(go())


def _schema(connection: Connection) -> dict[str, Any]:
    inspector = inspect(connection)
    tables = set(inspector.get_table_names()) - {"alembic_version"}
    return {
        table: {
            "columns": sorted(
                (c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(table)
            ),
            "fks": sorted(
                (fk["name"], fk["referred_table"]) for fk in inspector.get_foreign_keys(table)
            ),
            "indexes": sorted(i["name"] for i in inspector.get_indexes(table)),
            "uniques": sorted(str(u["name"]) for u in inspector.get_unique_constraints(table)),
        }
        for table in sorted(tables)
    }


def _seed(connection: Connection) -> dict[str, uuid.UUID]:
    """One row in each core table, written through the tables the migration created."""
    ids = {name: uuid.uuid4() for name in ("org", "user", "membership", "thread", "message")}
    stamp = {"created_at": NOW, "updated_at": NOW}
    rows = [
        ("organizations", {"id": ids["org"], "name": "Acme", "slug": "acme"}),
        ("users", {"id": ids["user"], "email": "ada@acme.test"}),
        (
            "memberships",
            {
                "id": ids["membership"],
                "organization_id": ids["org"],
                "user_id": ids["user"],
                "role": "owner",
            },
        ),
        (
            "threads",
            {
                "id": ids["thread"],
                "organization_id": ids["org"],
                "created_by_id": ids["user"],
                "title": "Spend",
            },
        ),
        (
            "messages",
            {
                "id": ids["message"],
                "thread_id": ids["thread"],
                "organization_id": ids["org"],
                "author_id": ids["user"],
                "seq": 1,
                "role": "user",
                "content": "Where does the money go?",
            },
        ),
    ]
    for table, values in rows:
        connection.execute(metadata.tables[table].insert().values(**values, **stamp))
    return ids


def _snapshot(connection: Connection) -> list[Any]:
    return [
        connection.execute(
            text(
                "SELECT o.name, o.tier, u.email, m.role FROM organizations o"
                " JOIN memberships m ON m.organization_id = o.id JOIN users u ON u.id = m.user_id"
            )
        ).all(),
        connection.execute(
            text(
                "SELECT t.title, g.seq, g.role, g.content FROM threads t"
                " JOIN messages g ON g.thread_id = t.id"
            )
        ).all(),
    ]


def _autogenerate_diff(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, metadata))


def _ok(result: Any) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return str(result.stdout).strip()


def test_upgrade_downgrade_upgrade_keeps_schema_and_data(empty_database: str) -> None:
    head = head_revision()
    assert head is not None
    assert head[:4].isdigit()

    assert _ok(migrate(empty_database, "current")) == "base"
    _ok(migrate(empty_database, "upgrade", "head"))
    assert _ok(migrate(empty_database, "current")).startswith(head)
    assert set(_schema_tables(empty_database)) == CORE_TABLES
    assert _run(empty_database, _autogenerate_diff) == []  # models and migrations agree
    first_schema = _run(empty_database, _schema)

    _run(empty_database, _seed)
    before = _run(empty_database, _snapshot)
    assert before[0] == [("Acme", "free", "ada@acme.test", "owner")]  # tier defaults to free

    # Upgrading an up-to-date database changes nothing and keeps every row.
    _ok(migrate(empty_database, "upgrade", "head"))
    assert _run(empty_database, _snapshot) == before

    _ok(migrate(empty_database, "downgrade", "base"))
    assert _ok(migrate(empty_database, "current")) == "base"
    assert set(_schema_tables(empty_database)) == set()

    _ok(migrate(empty_database, "upgrade", "head"))
    assert _run(empty_database, _schema) == first_schema
    assert _run(empty_database, _snapshot) == [[], []]
    _run(empty_database, _seed)
    assert _run(empty_database, _snapshot) == before


ROLLUP_TABLES = ("usage_rollups", "usage_hash_rollups", "usage_hash_totals")


def _usage(connection: Connection) -> int:
    """An organisation with 240 records over 10 hours: repeated prompts and prefixes,
    failures, reported costs and an unpriced model, as the analyses meet them."""
    org = uuid.uuid4()
    stamp = {"created_at": NOW, "updated_at": NOW}
    connection.execute(
        metadata.tables["organizations"].insert().values(id=org, name="Old", slug="old", **stamp)
    )
    rows = [
        {
            "id": uuid.uuid4(), "organization_id": org, "record_id": f"r{n:03d}",
            "occurred_at": NOW.replace(hour=n % 10, minute=n % 60), "provider": "openai",
            "model": ("gpt-4o", "gpt-4o-mini", "house-1")[n % 3], "workload": f"w{n % 2}",
            "input_tokens": 100 + n, "cached_input_tokens": 0 if n % 4 else 50,
            "cache_write_tokens": 0, "output_tokens": n, "reasoning_tokens": n % 7,
            "latency_ms": None if n % 5 == 0 else 10 * n, "status": ("ok", "error")[n % 9 == 0],
            "cost_nanos": 1000 * n, "cost_source": ("catalogue", "reported", "unpriced")[n % 3],
            "prompt_hash": f"p{n % 17}", "prefix_hash": "sys" if n % 2 else None,
            "prefix_tokens": 40 if n % 2 else 0, "end_user": None if n % 6 == 0 else "u",
            "metadata": None, "ingested_at": NOW,
        }
        for n in range(240)
    ]  # fmt: skip
    connection.execute(metadata.tables["usage_records"].insert(), rows)
    return len(rows)


def _rollups(connection: Connection) -> dict[str, list[Any]]:
    def rows(table: str) -> list[Any]:
        found = connection.execute(text(f"SELECT * FROM {table}")).all()  # noqa: S608
        return sorted(
            (tuple(round(v, 3) if isinstance(v, float) else v for v in row) for row in found),
            key=repr,
        )

    return {table: rows(table) for table in ROLLUP_TABLES}


def test_rollups_are_backfilled_from_the_records_stored_before(empty_database: str) -> None:
    """The migration fills the rollups from existing records with its own frozen SQL; the
    application's definition (`apex usage rebuild-rollups`) must give the same rows."""
    _ok(migrate(empty_database, "upgrade", "2026_11_26_0009"))
    stored = _run(empty_database, _usage)
    _ok(migrate(empty_database, "upgrade", "head"))
    backfilled = _run(empty_database, _rollups)
    assert sum(row[7] for row in backfilled["usage_rollups"]) == stored  # calls
    assert len(backfilled["usage_hash_totals"]) > 17  # prompts (and the prefix) per model
    rebuilt = run_apex(empty_database, "usage", "rebuild-rollups")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert f"from {stored:,} records" in rebuilt.stderr
    assert _run(empty_database, _rollups) == backfilled


def _schema_tables(url: str) -> list[str]:
    return list(_run(url, _schema))


def test_foreign_keys_are_enforced(empty_database: str) -> None:
    _ok(migrate(empty_database, "upgrade", "head"))

    def orphan_message(connection: Connection) -> None:
        missing = uuid.uuid4()
        connection.execute(
            metadata.tables["messages"]
            .insert()
            .values(
                id=uuid.uuid4(),
                thread_id=missing,
                organization_id=missing,
                seq=1,
                role="user",
                content="x",
                created_at=NOW,
                updated_at=NOW,
            )
        )

    with pytest.raises(IntegrityError):
        _run(empty_database, orphan_message)
    assert (
        _run(empty_database, lambda c: c.execute(text("SELECT count(*) FROM messages")).scalar())
        == 0
    )


def test_deleting_an_organisation_cascades_to_its_threads_and_messages(empty_database: str) -> None:
    _ok(migrate(empty_database, "upgrade", "head"))
    ids = _run(empty_database, _seed)
    organizations = metadata.tables["organizations"]
    _run(
        empty_database,
        lambda c: c.execute(organizations.delete().where(organizations.c.id == ids["org"])),
    )
    counts = _run(
        empty_database,
        lambda c: [
            c.execute(text(f"SELECT count(*) FROM {t}")).scalar()  # noqa: S608 (fixed names)
            for t in ("threads", "messages", "memberships", "users")
        ],
    )
    assert counts == [0, 0, 0, 1]  # the user outlives the organisation


def test_partitioning_keeps_the_records_stored_before_and_their_dedup_keys(
    empty_database: str,
) -> None:
    """Records stored before partitioning stay readable (on PostgreSQL in the legacy
    partition, attached without a copy), their ids still deduplicate, new months get
    partitions of their own, and retention empties and then drops the legacy partition."""
    _ok(migrate(empty_database, "upgrade", "2026_11_26_0011"))
    stored = _run(empty_database, _usage)
    _ok(migrate(empty_database, "upgrade", "head"))
    postgres = empty_database.startswith("postgresql")
    if postgres:
        kinds = dict(
            _run(empty_database, lambda c: c.execute(text(
                "SELECT relname, relkind::text || (CASE WHEN relispartition THEN '+' ELSE '' END) "
                "FROM pg_class WHERE relname IN ('usage_records', 'usage_records_legacy')"
            )).all())
        )  # fmt: skip
        assert kinds == {"usage_records": "p", "usage_records_legacy": "r+"}
    asyncio.run(_after_partitioning(empty_database, stored))


async def _after_partitioning(url: str, stored: int) -> None:
    from apex.kit.db import Database
    from apex.settings import Settings
    from apex.usage import service
    from apex.usage.maintenance import maintain
    from apex.usage.rollups import MeterRepository
    from apex.usage.spend import Window

    db = Database(Settings(database_url=url, environment="test"))
    try:
        async with db.unit_of_work() as session:
            org = uuid.UUID(str(await session.scalar(text("SELECT id FROM organizations"))))
            old = await service.stored_record(session, org, "r007")
            assert (old.model, old.input_tokens) == ("gpt-4o-mini", 107)
            sent = [
                {"id": "r007", "timestamp": "2027-02-01T10:00:00Z", "provider": "openai",
                 "model": "gpt-4o", "input_tokens": 5},
                {"id": "new-1", "timestamp": "2027-02-01T10:00:00Z", "provider": "openai",
                 "model": "gpt-4o", "input_tokens": 5},
            ]  # fmt: skip
            report = await service.ingest(session, org, sent, now=NOW)
        assert (report.accepted, report.duplicates) == (1, 1)  # r007 was stored before
        if db.backend == "postgresql":
            async with db.unit_of_work() as session:
                where = await session.scalar(
                    text(
                        "SELECT tableoid::regclass::text FROM usage_records "
                        "WHERE record_id = 'new-1'"
                    )
                )
            assert where == "usage_records_y2027m02_r30"  # the Free plan keeps 30 days
        # A year on, the Free plan's retention has passed for everything stored before.
        maintained = await maintain(db, NOW.replace(year=2027, month=12))
        if db.backend == "postgresql":  # rows are deleted only where no partition is theirs
            assert maintained.deleted == stored
            assert maintained.dropped == ["usage_records_y2027m02_r30", "usage_records_legacy"]
        else:
            assert maintained.deleted == stored + 1
        async with db.unit_of_work() as session:
            meter = await MeterRepository(session).read(
                org, Window(datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))
            )
            left = await session.scalar(text("SELECT count(*) FROM usage_records"))
        assert (meter.records, left) == (0, 0)
    finally:
        await db.dispose()
