"""Usage housekeeping, run by `apex worker` (and by `apex serve` on the embedded default)
every `APEX_USAGE_MAINTENANCE_SECONDS`, or once by `apex usage maintain`.

- **Partitions ahead** (PostgreSQL): this month's and the next `MONTHS_AHEAD` months'
  partitions exist before a record needs them (ingestion creates any other on demand).
- **Retention**: a record is kept for the retention of the plan its organisation was on
  when it arrived (`retention_days`, BRIEF §4b), and leaves once its whole UTC month is that
  old: the month's partition of that retention class is detached without blocking readers or
  writers and dropped; nothing is `DELETE`d. Records without a partition of their own (the
  embedded SQLite default, and on PostgreSQL the `usage_records_legacy` partition a
  migrated installation keeps its earlier records in) are deleted by the same rule. The
  rollups of every organisation that lost records are recomputed for the months concerned,
  in the transaction that removes them, so they always equal the records that remain.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog

from apex.billing.plans import PLANS, Plan
from apex.kit.clock import Clock
from apex.kit.db import Database
from apex.usage.repository import (
    Partition,
    PartitionRepository,
    UsageRepository,
    detach_concurrently,
    maintenance_lock,
)
from apex.usage.rollups import RollupRepository
from apex.usage.spend import Window, month_start, next_month

MONTHS_AHEAD = 2
log = structlog.get_logger(__name__)


@dataclass
class MaintenanceReport:
    created: list[str] = field(default_factory=list)  # partitions created
    dropped: list[str] = field(default_factory=list)  # partitions dropped
    deleted: int = 0  # records deleted where they had no partition of their own
    recomputed: int = 0  # organisation-months whose rollups were recomputed
    skipped: bool = False  # another process was running a pass


def retention_classes() -> list[int]:
    return sorted({plan.retention_days for plan in PLANS.values()})


def expiry(retention_days: int, now: datetime) -> datetime:
    """Records of this retention class in months that end at or before this instant have
    been kept long enough: whole months are kept, so a record stays between
    `retention_days` and `retention_days` plus a month."""
    return month_start(now - timedelta(days=retention_days))


def _over(partition: Partition, now: datetime) -> bool:
    """Whether a partition's month is past its retention class (a month partition: past
    the longest)."""
    retention = partition.retention_days or max(retention_classes())
    return next_month(partition.month) <= expiry(retention, now)


async def maintain(database: Database, now: datetime) -> MaintenanceReport:
    """One pass; on PostgreSQL skipped (`report.skipped`) while another process runs one."""
    if database.backend != "postgresql":
        return await _maintain(database, now)
    async with maintenance_lock(database.engine) as held:
        return await _maintain(database, now) if held else MaintenanceReport(skipped=True)


async def _maintain(database: Database, now: datetime) -> MaintenanceReport:
    report = MaintenanceReport()
    if database.backend == "postgresql":
        report.created = await create_ahead(database, now)
        await _drop_expired_partitions(database, now, report)
    for retention_days in retention_classes():
        await _delete_expired(database, expiry(retention_days, now), retention_days, None, report)
    for plan in PLANS.values():  # records stored before retention classes: the plan now
        await _delete_expired(database, expiry(plan.retention_days, now), 0, plan, report)
    if database.backend == "postgresql":
        await _drop_empty_legacy(database, report)
    return report


async def create_ahead(database: Database, now: datetime) -> list[str]:
    months = [month_start(now)]
    for _ in range(MONTHS_AHEAD):
        months.append(next_month(months[-1]))
    wanted = {(month, retention) for month in months for retention in retention_classes()}
    async with database.unit_of_work(primary=True) as session:
        return await PartitionRepository(session).ensure(wanted)


async def _partitions(database: Database) -> list[Partition]:
    async with database.unit_of_work(primary=True) as session:
        return await PartitionRepository(session).partitions()


async def _detach(database: Database, partition: Partition) -> None:
    async with database.engine.connect() as connection:
        autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
        await detach_concurrently(autocommit, partition)


async def _drop_expired_partitions(
    database: Database, now: datetime, report: MaintenanceReport
) -> None:
    """Detach each expired retention-class partition, then, in one transaction each, drop
    it and recompute the rollups of the organisations it held. A detached partition left
    by an interrupted pass is finished by the next."""
    for partition in await _partitions(database):
        if partition.retention_days is not None and partition.attached and _over(partition, now):
            await _detach(database, partition)
    partitions = await _partitions(database)
    for partition in partitions:
        if partition.retention_days is not None and not partition.attached:
            async with database.unit_of_work(primary=True) as session:
                repository = PartitionRepository(session)
                window = Window(partition.month, next_month(partition.month))
                for organization_id in await repository.organizations_in(partition):
                    await RollupRepository(session).rebuild(organization_id, window)
                    report.recomputed += 1
                await repository.drop(partition)
            report.dropped.append(partition.name)
            log.info("usage_partition_dropped", partition=partition.name)
    # A month whose retention-class partitions are all gone goes too.
    leaves = {p.month for p in partitions if p.retention_days is not None and p.attached}
    for partition in partitions:
        monthly = partition.retention_days is None
        if monthly and partition.month not in leaves and _over(partition, now):
            await _detach_and_drop(database, partition, report)


async def _delete_expired(
    database: Database,
    before: datetime,
    retention_days: int,
    plan: Plan | None,
    report: MaintenanceReport,
) -> None:
    """Delete the records of a retention class (class 0: of organisations on `plan`) older
    than `before`, where they have no partition of their own, and recompute the rollups of
    the hours they were in."""
    tier = plan.tier.value if plan is not None else None
    async with database.unit_of_work(primary=True) as session:
        repository = UsageRepository(session)
        expired = await repository.expired(retention_days, before, tier)
        if not expired:
            return
        report.deleted += await repository.delete_expired(retention_days, before, tier)
        for organization_id, oldest in expired:
            window = Window(oldest, before).whole_hours()
            await RollupRepository(session).rebuild(organization_id, window)
            report.recomputed += 1


async def _drop_empty_legacy(database: Database, report: MaintenanceReport) -> None:
    """Once retention has emptied the legacy partition, it goes: its months then get
    partitions of their own like any other."""
    async with database.unit_of_work(primary=True) as session:
        repository = PartitionRepository(session)
        legacy = await repository.legacy()
        if legacy is None or not await repository.is_empty(legacy):
            return
    await _detach_and_drop(database, legacy, report)


async def _detach_and_drop(
    database: Database, partition: Partition, report: MaintenanceReport
) -> None:
    """An empty partition: detached without blocking the table (if it still is attached),
    then dropped."""
    if partition.attached:
        await _detach(database, partition)
    async with database.unit_of_work(primary=True) as session:
        await PartitionRepository(session).drop(partition)
    report.dropped.append(partition.name)


async def keep_maintaining(
    database: Database,
    clock: Clock,
    interval_s: float,
    stop: asyncio.Event,
    first_pass: asyncio.Event | None = None,
) -> None:
    """Run `maintain` now and then every `interval_s` until `stop` is set; `first_pass` is
    set once the first pass has ended. A failed pass is logged and retried at the next turn."""
    while not stop.is_set():
        try:
            report = await maintain(database, clock.now())
            if report.created or report.dropped or report.deleted:
                log.info("usage_maintained", **report.__dict__)
        except Exception:
            log.exception("usage_maintenance_failed")
        if first_pass is not None:
            first_pass.set()
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval_s)
        except TimeoutError:
            continue
