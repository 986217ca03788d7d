"""Retention per plan, and the partitions it works on.

Three organisations send records over fifteen months: one on Free (30 days), one on Mid
(365 days), and one that moved from Early (180 days) to Free half-way, so one month of
its records sits in two retention classes. A maintenance pass "in June 2027" must leave
exactly the records of months not yet past the retention they arrived under (worked out
by hand below), with rollups equal to what remains; on PostgreSQL it must do so by
dropping whole partitions (not one row deleted) and must also finish a partition a crashed
pass had detached but not dropped. Replaying a dropped record does not bring it back.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, text

from apex.kit.db import Database
from apex.migrations import runner
from apex.settings import Settings
from apex.usage import service
from apex.usage.maintenance import maintain
from apex.usage.models import UsageRecord
from apex.usage.rollups import MeterRepository, SpendRepository
from apex.usage.spend import Window
from tests.harness import ApexWorker, PostgresCluster, RedisServer
from tests.harness.procs import wait_until
from tests.integration.conftest import insert_organization, with_database
from tests.integration.critical.conftest import database_name
from tests.integration.test_usage_rollups import assert_same, record
from tests.unit.records import Call, aggregate

NOW = datetime(2027, 6, 15, 12, tzinfo=UTC)
EVERYTHING = Window(datetime(2026, 1, 1, tzinfo=UTC), datetime(2027, 9, 1, tzinfo=UTC))


def calls(prefix: str, year: int, month: int, count: int = 6) -> list[Call]:
    """`count` calls in the month, two per hour, sharing a prompt (rollups of every kind)."""
    start = datetime(year, month, 3, 9, tzinfo=UTC)
    return [
        Call(
            id=f"{prefix}-{year}-{month:02d}-{n}", at=start + timedelta(minutes=30 * n),
            provider="openai", model="gpt-4o", workload="support", input=1000 + n,
            output=200, prompt_hash=f"{prefix}-p{n % 2}", prefix_hash="sys",
            prefix_tokens=400,
        )
        for n in range(count)
    ]  # fmt: skip


# By hand: a record leaves once its whole month ended at least its retention before NOW.
# Free (30 d): months ending by 2027-05-01 go (March, April); May and June stay.
FREE_KEPT = {(2027, 5), (2027, 6)}
FREE_DROPPED = {(2027, 3), (2027, 4)}
# Mid (365 d): months ending by 2026-06-01 go (May 2026); June 2026 and May 2027 stay.
MID_KEPT = {(2026, 6), (2027, 5)}
MID_DROPPED = {(2026, 5)}
# Early (180 d) until the plan change: months ending by 2026-12-01 go (November 2026).
# Then Free: December 2026 goes, May 2027 stays. December 2026 keeps its Early records.
EARLY_KEPT = {(2026, 12)}
EARLY_DROPPED = {(2026, 11)}
FREE_AFTER_KEPT = {(2027, 5)}
FREE_AFTER_DROPPED = {(2026, 12)}


async def organization(db: Database, tier: str) -> uuid.UUID:
    return await insert_organization(db, "Retention", tier, NOW)


async def set_tier(db: Database, org: uuid.UUID, tier: str) -> None:
    async with db.unit_of_work() as session:
        await session.execute(
            text("UPDATE organizations SET tier = :tier WHERE id = :id"),
            {"id": org.hex if db.backend == "sqlite" else org, "tier": tier},
        )


async def ingest(db: Database, org: uuid.UUID, sent: list[Call]) -> dict[str, int]:
    async with db.unit_of_work() as session:
        report = await service.ingest(session, org, [record(c) for c in sent], now=NOW)
    async with db.unit_of_work() as session:  # arrival stamped by the caller's clock
        arrived = await session.scalars(
            select(UsageRecord.ingested_at).where(UsageRecord.organization_id == org).distinct()
        )
        assert [stamp.astimezone(UTC) for stamp in arrived] == [NOW]
    return {"accepted": report.accepted, "duplicates": report.duplicates}


def months(prefix: str, wanted: set[tuple[int, int]]) -> list[Call]:
    return [c for year, month in sorted(wanted) for c in calls(prefix, year, month)]


async def stored_ids(db: Database, org: uuid.UUID) -> set[str]:
    async with db.unit_of_work() as session:
        rows = await session.execute(
            text("SELECT record_id FROM usage_records WHERE organization_id = :id"),
            {"id": org.hex if db.backend == "sqlite" else org},
        )
        return {record_id for (record_id,) in rows}


async def partitions(db: Database) -> set[str]:
    async with db.unit_of_work() as session:
        rows = await session.execute(
            text("SELECT relname FROM pg_class WHERE relname LIKE 'usage_records_y%'")
        )
        return {name for (name,) in rows}


async def assert_rollups_match(db: Database, org: uuid.UUID, kept: list[Call]) -> None:
    async with db.unit_of_work() as session:
        assert_same(
            await SpendRepository(session).fetch(org, EVERYTHING), aggregate(kept, EVERYTHING)
        )
        meter = await MeterRepository(session).read(org, EVERYTHING)
    assert meter.records == len(kept)


async def scenario(db: Database) -> list[set[str]]:
    """Run the story; return the record ids each organisation (free, mid, changed) keeps."""
    free = await organization(db, "free")
    mid = await organization(db, "mid")
    changed = await organization(db, "early")
    await ingest(db, free, months("free", FREE_KEPT | FREE_DROPPED))
    await ingest(db, mid, months("mid", MID_KEPT | MID_DROPPED))
    await ingest(db, changed, months("early", EARLY_KEPT | EARLY_DROPPED))
    await set_tier(db, changed, "free")
    await ingest(db, changed, months("late", FREE_AFTER_KEPT | FREE_AFTER_DROPPED))

    postgres = db.backend == "postgresql"
    if postgres:  # a pass that crashed after detaching one expired partition
        async with db.engine.connect() as connection:
            autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
            await autocommit.exec_driver_sql(
                "ALTER TABLE usage_records_y2027m03 DETACH PARTITION usage_records_y2027m03_r30"
            )

    report = await maintain(db, NOW)

    kept = {
        free: months("free", FREE_KEPT),
        mid: months("mid", MID_KEPT),
        changed: months("early", EARLY_KEPT) + months("late", FREE_AFTER_KEPT),
    }
    dropped_calls = (
        months("free", FREE_DROPPED) + months("mid", MID_DROPPED)
        + months("early", EARLY_DROPPED) + months("late", FREE_AFTER_DROPPED)
    )  # fmt: skip
    for org, calls_kept in kept.items():
        assert await stored_ids(db, org) == {c.id for c in calls_kept}
        await assert_rollups_match(db, org, calls_kept)

    if postgres:
        assert report.deleted == 0  # retention dropped partitions; no row was deleted
        gone = {"usage_records_y2027m03_r30", "usage_records_y2027m04_r30",
                "usage_records_y2026m05_r365", "usage_records_y2026m11_r180",
                "usage_records_y2026m12_r30"}  # fmt: skip
        assert set(report.dropped) >= gone
        present = await partitions(db)
        assert not gone & present
        assert {"usage_records_y2026m12_r180", "usage_records_y2027m05_r30",
                "usage_records_y2026m06_r365"} <= present  # fmt: skip
        # Created ahead: this month and the next two, for every plan's retention.
        for month in ("2027m06", "2027m07", "2027m08"):
            for days in (30, 180, 365, 2555):
                assert f"usage_records_y{month}_r{days}" in present
    else:
        assert report.deleted == len(dropped_calls)

    # Nothing is left to do; and a dropped record sent again stays out (its id is kept).
    again = await maintain(db, NOW)
    assert (again.dropped, again.deleted, again.created) == ([], 0, [])
    replay = [c for c in dropped_calls if c.id.startswith("free-")]
    assert await ingest(db, free, replay) == {"accepted": 0, "duplicates": len(replay)}
    return [await stored_ids(db, org) for org in (free, mid, changed)]


def test_retention_keeps_each_plans_months_and_the_rollups_of_what_remains(
    empty_database: str,
) -> None:
    config = Settings(database_url=empty_database, environment="test")
    runner.upgrade(config)

    free, mid, changed = with_database(config, scenario)
    assert free == {c.id for c in months("free", FREE_KEPT)}
    assert mid == {c.id for c in months("mid", MID_KEPT)}
    assert changed == {c.id for c in months("early", EARLY_KEPT) + months("late", FREE_AFTER_KEPT)}


def test_the_worker_creates_the_coming_months_partitions(
    postgres: PostgresCluster,
    database_url: str,
    redis_server: RedisServer,
    start_worker: Callable[..., ApexWorker],
) -> None:
    """`apex worker` runs the maintenance pass when it starts: this month's partitions and
    the next two months' exist, for every plan's retention, before a record needs them."""
    today = datetime.now(UTC)
    index = today.year * 12 + today.month - 1
    wanted = {
        f"usage_records_y{(index + k) // 12:04d}m{(index + k) % 12 + 1:02d}_r{days}"
        for k in range(3)
        for days in (30, 180, 365, 2555)
    }
    database = database_name(database_url)

    def created() -> set[str]:
        listed = postgres.sql(
            "SELECT relname FROM pg_class WHERE relname LIKE 'usage_records_y%'", database
        )
        return set(listed.split())

    assert not wanted & created()
    start_worker(database_url, redis_server.url)
    assert wait_until(lambda: wanted <= created(), timeout=30), sorted(wanted - created())
