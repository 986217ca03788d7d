"""All SQL over usage records and price overrides, always scoped to one organisation."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any

from sqlalchemy import (
    Column,
    MetaData,
    String,
    Table,
    Uuid,
    bindparam,
    delete,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.schema import CreateTable

from apex.identity.models import Organization
from apex.kit.repository import Repository
from apex.usage.models import (
    PriceOverride,
    UsageImport,
    UsageImportProblem,
    UsageRecord,
    UsageRecordId,
)
from apex.usage.spend import month_start, next_month

# The mapped attributes of a usage record and their column names (`attributes` is stored
# in the `metadata` column), in table order: the COPY path writes them positionally.
_ATTRIBUTES = [attribute.key for attribute in UsageRecord.__mapper__.column_attrs]
_COLUMNS = [UsageRecord.__mapper__.column_attrs[key].columns[0].name for key in _ATTRIBUTES]
_COLUMN_LIST = ", ".join(f'"{column}"' for column in _COLUMNS)
_RECORDS: Table = UsageRecord.__table__  # type: ignore[assignment]
STAGING = "usage_records_staging"  # the bulk path's transaction-local table
# After `insert_new`, the staging table holds exactly the batch's new records, until the
# transaction ends: the rollups (`RollupRepository.add`) aggregate it, never the whole table.
STAGING_TABLE = Table(STAGING, MetaData(), *(Column(c.name, c.type) for c in _RECORDS.c))
_CREATE_STAGING = (
    f"CREATE TEMP TABLE IF NOT EXISTS {STAGING} (LIKE usage_records INCLUDING DEFAULTS) "
    "ON COMMIT DELETE ROWS"
)
# SQLite has no LIKE nor ON COMMIT: the same columns, emptied at the start of each batch.
_CREATE_STAGING_SQLITE = str(CreateTable(STAGING_TABLE).compile(dialect=sqlite.dialect())).replace(
    "CREATE TABLE", "CREATE TEMP TABLE IF NOT EXISTS", 1
)
# SQLite cannot INSERT inside a WITH: the dedup keys first (`WHERE true` tells its parser
# the ON CONFLICT belongs to the INSERT), then the staged records, the duplicates unstaged.
_STAGED_IDS_SQLITE = text(
    "INSERT INTO usage_record_ids (organization_id, record_id, occurred_at) "  # noqa: S608
    f"SELECT organization_id, record_id, occurred_at FROM {STAGING} WHERE true "
    "ON CONFLICT DO NOTHING RETURNING record_id"
)
_MOVE_STAGED_SQLITE = text(
    f"INSERT INTO usage_records ({_COLUMN_LIST}) SELECT {_COLUMN_LIST} FROM {STAGING}"  # noqa: S608
)
_STAGE_SQLITE = f"INSERT INTO {STAGING} ({_COLUMN_LIST}) VALUES ({', '.join('?' * len(_COLUMNS))})"  # noqa: S608


@cache
def _sqlite_converters(dialect: Dialect) -> list[Callable[[Any], Any] | None]:
    """Each staged column's own bind conversion (as SQLAlchemy applies it), in table order:
    the rows go to the driver's executemany as tuples, without a compiled statement's
    per-row parameter processing (measured: three quarters of a batch's staging time)."""
    return [
        STAGING_TABLE.c[column].type.dialect_impl(dialect).bind_processor(dialect)
        for column in _COLUMNS
    ]


# The dedup key and the records in one statement: only the staged records whose id was new
# to usage_record_ids are stored.
_MOVE_NEW = (
    "WITH new AS (INSERT INTO usage_record_ids (organization_id, record_id, occurred_at) "  # noqa: S608
    f"SELECT organization_id, record_id, occurred_at FROM {STAGING} "
    "ON CONFLICT DO NOTHING RETURNING record_id) "
    f"INSERT INTO usage_records ({_COLUMN_LIST}) "
    f"SELECT {', '.join(f'staged.{c}' for c in _COLUMNS)} FROM {STAGING} AS staged "
    "JOIN new ON new.record_id = staged.record_id RETURNING record_id"
)


_JSON_AT = _ATTRIBUTES.index("attributes")


def _copy_record(row: dict[str, Any]) -> tuple[Any, ...]:
    """A row as asyncpg's binary COPY wants it: table order, the json column as text."""
    values = list(map(row.get, _ATTRIBUTES))
    if values[_JSON_AT] is not None:
        values[_JSON_AT] = json.dumps(values[_JSON_AT], separators=(",", ":"))
    return tuple(values)


class UsageRepository(Repository[UsageRecord]):
    model = UsageRecord

    async def insert_new(self, rows: Sequence[dict[str, Any]]) -> set[str]:
        """Insert the rows whose record id the organisation has not sent before; return the
        ids inserted. The dedup key (`usage_record_ids`) is written in the same transaction
        and conflicts are skipped, so a retried batch adds nothing.

        Both backends stage the rows in a transaction-local table, then move the new ones
        with `INSERT … SELECT … ON CONFLICT DO NOTHING RETURNING`, reporting the duplicates;
        afterwards the staging table holds exactly the batch's new records. On PostgreSQL
        the rows are COPied (binary) into it: the cost of a COPY."""
        if not rows:
            return set()
        if self.session.get_bind().dialect.name == "postgresql":
            await PartitionRepository(self.session).ensure(
                {(month_start(row["occurred_at"]), row["retention_days"]) for row in rows}
            )
            return await self._copy_new(rows)
        return await self._stage_new(rows)

    async def _stage_new(self, rows: Sequence[dict[str, Any]]) -> set[str]:
        """SQLite: one executemany into the staging table (each value converted once), then
        two statements inside the database, as `_MOVE_NEW` does in one on PostgreSQL."""
        connection = await self.session.connection()
        await connection.exec_driver_sql(_CREATE_STAGING_SQLITE)
        await connection.execute(delete(STAGING_TABLE))  # an earlier batch's
        convert = _sqlite_converters(connection.dialect)
        staged = [
            tuple(
                value if to_sqlite is None else to_sqlite(value)
                for to_sqlite, value in zip(convert, map(row.__getitem__, _ATTRIBUTES), strict=True)
            )
            for row in rows
        ]
        await connection.exec_driver_sql(_STAGE_SQLITE, staged)
        inserted = {record_id for (record_id,) in await connection.execute(_STAGED_IDS_SQLITE)}
        await self._unstage([row["record_id"] for row in rows if row["record_id"] not in inserted])
        await connection.execute(_MOVE_STAGED_SQLITE)
        return inserted

    async def _unstage(self, record_ids: list[str]) -> None:
        """Drop the staged records that were stored before (duplicates) from the staging table."""
        if not record_ids:
            return
        if self.session.get_bind().dialect.name == "postgresql":  # one array, not N params
            await self.session.execute(_DROP_STAGED, {"ids": record_ids})
        else:
            await self.session.execute(
                delete(STAGING_TABLE).where(STAGING_TABLE.c.record_id.in_(record_ids))
            )

    async def _copy_new(self, rows: Sequence[dict[str, Any]]) -> set[str]:
        """Afterwards the staging table holds exactly the records inserted, for the rollups
        (`RollupRepository.add`) to read in the same transaction."""
        connection = await self.session.connection()
        await connection.exec_driver_sql(_CREATE_STAGING)
        await connection.exec_driver_sql(f"TRUNCATE {STAGING}")  # an earlier batch's
        driver = (await connection.get_raw_connection()).driver_connection
        assert driver is not None
        records = list(map(_copy_record, rows))
        await driver.copy_records_to_table(STAGING, records=records, columns=_COLUMNS)
        moved = await connection.exec_driver_sql(_MOVE_NEW)
        inserted = {record_id for (record_id,) in moved}
        await self._unstage([row["record_id"] for row in rows if row["record_id"] not in inserted])
        return inserted

    async def by_record_id(self, organization_id: uuid.UUID, record_id: str) -> UsageRecord | None:
        """The record, found through its dedup key's `occurred_at` (one partition, its index)."""
        stored = (
            select(UsageRecordId.occurred_at)
            .where(
                UsageRecordId.organization_id == organization_id,
                UsageRecordId.record_id == record_id,
            )
            .scalar_subquery()
        )
        statement = select(UsageRecord).where(
            UsageRecord.organization_id == organization_id,
            UsageRecord.occurred_at == stored,
            UsageRecord.record_id == record_id,
        )
        found: UsageRecord | None = await self.session.scalar(statement)
        return found

    async def expired(
        self, retention_days: int, before: datetime, tier: str | None
    ) -> list[tuple[uuid.UUID, datetime]]:
        """The organisations with records of this retention class older than `before` (class
        0: only organisations on `tier`), each with its oldest such record's time."""
        statement = (
            select(UsageRecord.organization_id, func.min(UsageRecord.occurred_at))
            .where(*_expired(retention_days, before, tier))
            .group_by(UsageRecord.organization_id)
            .order_by(UsageRecord.organization_id)
        )
        return [(row[0], row[1]) for row in await self.session.execute(statement)]

    async def delete_expired(self, retention_days: int, before: datetime, tier: str | None) -> int:
        """Delete those records (where they have no partition of their own to drop)."""
        result = await self.session.execute(
            delete(UsageRecord).where(*_expired(retention_days, before, tier))
        )
        return int(result.rowcount)  # type: ignore[attr-defined]

    async def stored_ids(self, organization_id: uuid.UUID, record_ids: Sequence[str]) -> set[str]:
        """Which of these record ids the organisation has already sent. On PostgreSQL the
        ids are one array parameter joined to the dedup key's index:
        a planner without statistics for a fresh table otherwise scans the organisation's
        rows for a long IN list (measured: 1.5-2.5 s per 1,000 ids at 20,000 rows)."""
        if not record_ids:
            return set()
        if self.session.get_bind().dialect.name == "postgresql":
            rows = await self.session.execute(
                _STORED_AMONG, {"organization_id": organization_id, "ids": list(record_ids)}
            )
            return {record_id for (record_id,) in rows}
        statement = select(UsageRecordId.record_id).where(
            UsageRecordId.organization_id == organization_id,
            UsageRecordId.record_id.in_(list(record_ids)),
        )
        return set((await self.session.scalars(statement)).all())


def _expired(retention_days: int, before: datetime, tier: str | None) -> list[Any]:
    conditions = [UsageRecord.retention_days == retention_days, UsageRecord.occurred_at < before]
    if tier is not None:
        on_tier = select(Organization.id).where(Organization.tier == tier)
        conditions.append(UsageRecord.organization_id.in_(on_tier))
    return conditions


_DROP_STAGED = text(f"DELETE FROM {STAGING} WHERE record_id = ANY(:ids)").bindparams(  # noqa: S608
    bindparam("ids", type_=postgresql.ARRAY(String))
)
_STORED_AMONG = text(
    "SELECT u.record_id FROM unnest(:ids) AS wanted(record_id) "
    "JOIN usage_record_ids u ON u.organization_id = :organization_id "
    "AND u.record_id = wanted.record_id"
).bindparams(
    bindparam("ids", type_=postgresql.ARRAY(String)),
    bindparam("organization_id", type_=Uuid()),
)


class PriceOverrideRepository(Repository[PriceOverride]):
    model = PriceOverride

    async def for_organization(self, organization_id: uuid.UUID) -> Sequence[PriceOverride]:
        statement = (
            select(PriceOverride)
            .where(PriceOverride.organization_id == organization_id)
            .order_by(PriceOverride.provider, PriceOverride.model)
        )
        return (await self.session.scalars(statement)).all()

    async def find(
        self, organization_id: uuid.UUID, provider: str, model: str
    ) -> PriceOverride | None:
        statement = select(PriceOverride).where(
            PriceOverride.organization_id == organization_id,
            PriceOverride.provider == provider,
            PriceOverride.model == model,
        )
        result: PriceOverride | None = await self.session.scalar(statement)
        return result


class ImportRepository(Repository[UsageImport]):
    model = UsageImport

    async def of_organization(
        self, organization_id: uuid.UUID, import_id: uuid.UUID
    ) -> UsageImport | None:
        found: UsageImport | None = await self.session.scalar(
            select(UsageImport).where(
                UsageImport.id == import_id, UsageImport.organization_id == organization_id
            )
        )
        return found

    async def latest(self, organization_id: uuid.UUID, limit: int) -> Sequence[UsageImport]:
        statement = (
            select(UsageImport)
            .where(UsageImport.organization_id == organization_id)
            .order_by(UsageImport.created_at.desc(), UsageImport.id.desc())
            .limit(limit)
        )
        return (await self.session.scalars(statement)).all()

    async def add_counts(self, import_id: uuid.UUID, **deltas: int) -> None:
        """Add to the import's counters (one UPDATE, in the chunk's transaction)."""
        await self.session.execute(
            update(UsageImport)
            .where(UsageImport.id == import_id)
            .values({name: getattr(UsageImport, name) + value for name, value in deltas.items()})
        )

    async def finish(
        self, import_id: uuid.UUID, status: str, at: datetime, error: str | None = None
    ) -> None:
        await self.session.execute(
            update(UsageImport)
            .where(UsageImport.id == import_id)
            .values(status=status, finished_at=at, updated_at=at, error=error)
        )

    async def add_problems(self, rows: Sequence[dict[str, Any]]) -> None:
        if rows:
            await self.session.execute(insert(UsageImportProblem), list(rows))

    async def problem_count(self, import_id: uuid.UUID) -> int:
        statement = select(func.count()).where(UsageImportProblem.import_id == import_id)
        return int(await self.session.scalar(statement) or 0)

    async def problems(
        self, organization_id: uuid.UUID, import_id: uuid.UUID
    ) -> Sequence[UsageImportProblem]:
        statement = (
            select(UsageImportProblem)
            .where(
                UsageImportProblem.import_id == import_id,
                UsageImportProblem.organization_id == organization_id,
            )
            .order_by(UsageImportProblem.line)
        )
        return (await self.session.scalars(statement)).all()


# --- partitions (PostgreSQL) ----------------------------------------------------------------

LEGACY_PARTITION = "usage_records_legacy"  # the table as it was before partitioning
_PARTITION_NAME = re.compile(r"^usage_records_y(\d{4})m(\d{2})(?:_r(\d+))?$")
PARTITION_LOCK_CLASS = 0x4151  # advisory lock class taken while partitions are created


def is_partition(table: str) -> bool:
    """Whether a table is one of `usage_records`' partitions (made at run time, not by
    migrations: `alembic check` leaves them out)."""
    return table == LEGACY_PARTITION or _PARTITION_NAME.match(table) is not None


def month_partition(month: datetime) -> str:
    """The partition of `usage_records` holding one UTC month (itself split by retention)."""
    return f"usage_records_y{month:%Y}m{month:%m}"


def leaf_partition(month: datetime, retention_days: int) -> str:
    """The partition holding one month's records kept for `retention_days`."""
    return f"{month_partition(month)}_r{retention_days}"


@dataclass(frozen=True, slots=True)
class Partition:
    """A partition table of `usage_records` by its name: a month, or a month's retention
    class (`retention_days`); `attached` is false once it is detached, before it is dropped."""

    name: str
    month: datetime
    retention_days: int | None
    attached: bool

    @property
    def parent(self) -> str:
        return "usage_records" if self.retention_days is None else month_partition(self.month)


def _parse_partition(name: str, attached: bool) -> Partition | None:
    match = _PARTITION_NAME.match(name)
    if match is None:
        return None
    year, month, retention = match.groups()
    return Partition(
        name=name,
        month=datetime(int(year), int(month), 1, tzinfo=UTC),
        retention_days=int(retention) if retention is not None else None,
        attached=attached,
    )


# pg_class read as a table (the statement's snapshot), not through to_regclass: the
# catalogue cache can still miss a partition another transaction just committed.
_MISSING = text(
    "SELECT name FROM unnest(:names) AS wanted(name) WHERE NOT EXISTS (SELECT FROM pg_class "
    "WHERE relname = name AND relnamespace = current_schema()::regnamespace)"
)
_LEGACY_BOUND = text(
    "SELECT pg_get_expr(relpartbound, oid) FROM pg_class "
    "WHERE relname = :name AND relispartition AND relnamespace = current_schema()::regnamespace"
)
_PARTITIONS = text(
    "SELECT relname, relispartition FROM pg_class "
    "WHERE relname LIKE 'usage\\_records\\_y%' AND relkind IN ('r', 'p') "
    "AND relnamespace = current_schema()::regnamespace ORDER BY relname"
)
_LEGACY = text(
    "SELECT relname, relispartition FROM pg_class WHERE relname = :name "
    "AND relkind = 'r' AND relnamespace = current_schema()::regnamespace"
)
_DETACH_PENDING = text(
    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
    "WHERE i.inhdetachpending AND c.relname LIKE 'usage\\_records\\_y%'"
)
_LIKE_RECORDS = "(LIKE usage_records INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"


def _timestamp(at: datetime) -> str:
    return f"'{at.isoformat()}'"


class PartitionRepository:
    """The monthly partitions of `usage_records` (PostgreSQL), each split by retention class.

    A partition is created as a plain table and then attached: ATTACH takes only a SHARE
    UPDATE EXCLUSIVE lock on the parent, where CREATE TABLE … PARTITION OF would take an
    ACCESS EXCLUSIVE one and stall every batch and read of the table meanwhile."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def ensure(self, wanted: set[tuple[datetime, int]]) -> list[str]:
        """Create the partitions of these (month, retention class) pairs that do not exist
        yet, in the caller's transaction; return the names created. Months the legacy
        partition covers need none. Concurrent callers take turns on an advisory lock."""
        names = {month_partition(m) for m, _ in wanted} | {leaf_partition(*w) for w in wanted}
        if not await self._missing(names):
            return []
        await self.session.execute(select(func.pg_advisory_xact_lock(PARTITION_LOCK_CLASS, 0)))
        missing = await self._missing(names)  # another transaction may have created them
        legacy_end = await self._legacy_end()
        created: list[str] = []
        for month in sorted({m for m, _ in wanted}):
            if legacy_end is not None and month < legacy_end:
                continue
            if month_partition(month) in missing:
                await self._create_month(month)
                created.append(month_partition(month))
            for retention_days in sorted(r for m, r in wanted if m == month):
                if leaf_partition(month, retention_days) in missing:
                    await self._create_leaf(month, retention_days)
                    created.append(leaf_partition(month, retention_days))
        return created

    async def _missing(self, names: set[str]) -> set[str]:
        rows = await self.session.execute(_MISSING.bindparams(_NAMES), {"names": sorted(names)})
        return {name for (name,) in rows}

    async def _legacy_end(self) -> datetime | None:
        """Where the legacy partition's range ends (it starts at MINVALUE), if it exists."""
        bound = await self.session.scalar(_LEGACY_BOUND, {"name": LEGACY_PARTITION})
        if bound is None:
            return None
        upper = re.search(r"TO \('([^']+)'\)", str(bound))
        assert upper is not None, bound
        return datetime.fromisoformat(upper.group(1)).astimezone(UTC)

    async def _create_month(self, month: datetime) -> None:
        name = month_partition(month)
        connection = await self.session.connection()
        await connection.exec_driver_sql(
            f"CREATE TABLE {name} {_LIKE_RECORDS} PARTITION BY LIST (retention_days)"
        )
        await connection.exec_driver_sql(
            f"ALTER TABLE usage_records ATTACH PARTITION {name} FOR VALUES FROM "
            f"({_timestamp(month)}) TO ({_timestamp(next_month(month))})"
        )

    async def _create_leaf(self, month: datetime, retention_days: int) -> None:
        name = leaf_partition(month, retention_days)
        connection = await self.session.connection()
        await connection.exec_driver_sql(f"CREATE TABLE {name} {_LIKE_RECORDS}")
        await connection.exec_driver_sql(
            f"ALTER TABLE {month_partition(month)} ATTACH PARTITION {name} "
            f"FOR VALUES IN ({int(retention_days)})"
        )

    async def partitions(self) -> list[Partition]:
        """Every month and retention-class partition, attached or detached (not dropped)."""
        rows = await self.session.execute(_PARTITIONS)
        found = [_parse_partition(name, attached) for name, attached in rows]
        return [partition for partition in found if partition is not None]

    async def legacy(self) -> Partition | None:
        """The partition holding the records of a migrated installation, if it still exists."""
        rows = await self.session.execute(_LEGACY, {"name": LEGACY_PARTITION})
        for _, attached in rows:
            return Partition(LEGACY_PARTITION, datetime.min.replace(tzinfo=UTC), None, attached)
        return None

    async def is_empty(self, partition: Partition) -> bool:
        found = await self.session.scalar(
            text(f"SELECT EXISTS (SELECT FROM {partition.name})")  # noqa: S608
        )
        return not found

    async def organizations_in(self, partition: Partition) -> list[uuid.UUID]:
        rows = await self.session.execute(
            text(f"SELECT DISTINCT organization_id FROM {partition.name}")  # noqa: S608
        )
        return [organization_id for (organization_id,) in rows]

    async def drop(self, partition: Partition) -> None:
        connection = await self.session.connection()
        await connection.exec_driver_sql(f"DROP TABLE {partition.name}")


async def detach_concurrently(connection: AsyncConnection, partition: Partition) -> None:
    """Detach a partition without blocking the table's readers and writers (outside any
    transaction, on an autocommit connection). A detach interrupted half-way is finished."""
    pending = {name for (name,) in await connection.execute(_DETACH_PENDING)}
    mode = "FINALIZE" if partition.name in pending else "CONCURRENTLY"
    await connection.exec_driver_sql(
        f"ALTER TABLE {partition.parent} DETACH PARTITION {partition.name} {mode}"
    )


_NAMES = bindparam("names", type_=postgresql.ARRAY(String))
_MAINTENANCE_KEY = f"{PARTITION_LOCK_CLASS}, 1"


@asynccontextmanager
async def maintenance_lock(engine: AsyncEngine) -> AsyncIterator[bool]:
    """Yield whether this process holds the usage maintenance lock (PostgreSQL, a session
    lock on a connection of its own): one maintenance pass runs at a time across workers."""
    async with engine.connect() as connection:
        held = bool(
            await connection.scalar(text(f"SELECT pg_try_advisory_lock({_MAINTENANCE_KEY})"))
        )
        await connection.commit()
        try:
            yield held
        finally:
            if held:
                await connection.execute(text(f"SELECT pg_advisory_unlock({_MAINTENANCE_KEY})"))
                await connection.commit()
