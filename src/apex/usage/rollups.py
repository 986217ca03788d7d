"""All SQL over the usage rollups: kept at ingest, rebuilt from the raw records on demand,
and read by the analyses (`SpendRepository`) and the billing meter (`MeterRepository`).

Three tables (apex.usage.models): `usage_rollups`, an organisation's calls per UTC hour x
workload x provider x model x status x cost source; `usage_hash_rollups`, calls per prompt
(or prefix) hash per hour; `usage_hash_totals`, all-time calls per hash, whose partial index
over hashes seen twice keeps the repeated-prompt analysis off the prompts sent once. Every
aggregate here is built from one definition (`_Definitions`), applied either to the records a
batch just stored (ingest) or to all of an organisation's records (rebuild).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Executable,
    Float,
    FromClause,
    Insert,
    SQLColumnExpression,
    String,
    Table,
    and_,
    case,
    cast,
    delete,
    distinct,
    func,
    literal_column,
    or_,
    select,
)
from sqlalchemy.ext.asyncio import AsyncSession

from apex.kit.db import dialect_insert
from apex.kit.sql import greatest_of, hour_start, least_of, utc_day, utc_hour
from apex.usage.models import (
    CallStatus,
    CostSource,
    HashKind,
    UsageHashRollup,
    UsageHashTotal,
    UsageRecord,
    UsageRollup,
)
from apex.usage.pricing import Tokens
from apex.usage.repository import STAGING_TABLE
from apex.usage.spend import (
    BreakdownRow,
    DayRow,
    DuplicateRow,
    FitRow,
    GroupRow,
    HourRow,
    PrefixRow,
    SpendData,
    Window,
    WindowTotals,
)

# The advisory-lock class of the rollups ("AP" for Apex); the object is the organisation.
ROLLUP_LOCK_CLASS = 0x4150


# --- the one definition of every rollup ----------------------------------------------------

FIT_SUMS = ("ii", "ir", "io", "rr", "ro", "oo", "ic", "rc", "oc", "cc")
TOKEN_COLUMNS = (
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
)

# Rollup column -> (aggregate over the records, how a stored value absorbs a new one).
Merge = Callable[[Any, Any], SQLColumnExpression[Any]]
Aggregates = dict[str, tuple[SQLColumnExpression[Any], Merge]]


def _add(stored: Any, new: Any) -> SQLColumnExpression[Any]:
    return stored + new  # type: ignore[no-any-return]


def _smaller(stored: Any, new: Any) -> SQLColumnExpression[Any]:
    return least_of(stored, new)


def _larger(stored: Any, new: Any) -> SQLColumnExpression[Any]:
    return greatest_of(stored, new)


class _Definitions:
    """Every rollup's keys and aggregates over a table of records: `usage_records` itself,
    or the transaction's staging table holding exactly the batch's new records."""

    def __init__(self, records: Table) -> None:
        c = records.c
        self.records = records
        prompt = c.input_tokens + c.cached_input_tokens + c.cache_write_tokens
        completion = c.output_tokens + c.reasoning_tokens
        # The fit's variables (FitRow): i = input + cache write, r = cached input, o = output.
        fit = {
            "i": cast(c.input_tokens + c.cache_write_tokens, Float),
            "r": cast(c.cached_input_tokens, Float),
            "o": cast(completion, Float),
            "c": cast(c.cost_nanos, Float),
        }
        self.hour = hour_start(c.occurred_at)
        self.rollup_keys: dict[str, SQLColumnExpression[Any]] = {
            "organization_id": c.organization_id, "hour": self.hour, "workload": c.workload,
            "provider": c.provider, "model": c.model, "status": c.status,
            "cost_source": c.cost_source,
        }  # fmt: skip
        self.rollup_values: Aggregates = {
            "calls": (func.count(), _add),
            **{name: (func.sum(c[name]), _add) for name in TOKEN_COLUMNS},
            "cost_nanos": (func.sum(c.cost_nanos), _add),
            "calls_with_end_user": (func.count(c.end_user), _add),
            "calls_with_latency": (func.count(c.latency_ms), _add),
            "latency_ms_sum": (func.coalesce(func.sum(c.latency_ms), 0), _add),
            "latency_ms_max": (func.coalesce(func.max(c.latency_ms), 0), _larger),
            "max_prompt_tokens": (func.max(prompt), _larger),
            "max_output_tokens": (func.max(completion), _larger),
            "first_record_id": (func.min(c.record_id), _smaller),
            "last_record_id": (func.max(c.record_id), _larger),
            "fit_c": (func.sum(fit["c"]), _add),
            **{f"fit_{pair}": (func.sum(fit[pair[0]] * fit[pair[1]]), _add) for pair in FIT_SUMS},
        }
        self.hash_values: Aggregates = {
            "calls": (func.count(), _add),
            "cost_nanos": (func.sum(c.cost_nanos), _add),
            "prefix_tokens": (func.sum(c.prefix_tokens), _add),
            "first_record_id": (func.min(c.record_id), _smaller),
            "last_record_id": (func.max(c.record_id), _larger),
        }
        self.total_values: Aggregates = {
            **self.hash_values,
            "first_hour": (func.min(self.hour), _smaller),
            "last_hour": (func.max(self.hour), _larger),
        }

    def hash_filter(self, kind: HashKind) -> tuple[Any, list[ColumnElement[bool]]]:
        """The hash a kind counts, and which records it counts."""
        c = self.records.c
        if kind is HashKind.PROMPT:
            return c.prompt_hash, [
                c.prompt_hash.is_not(None),
                c.status == CallStatus.OK.value,
                c.cost_source != CostSource.UNPRICED.value,
            ]
        return c.prefix_hash, [
            c.prefix_hash.is_not(None),
            c.cached_input_tokens == 0,
            c.cache_write_tokens == 0,
        ]

    def hash_keys(self, kind: HashKind, *, hourly: bool) -> dict[str, SQLColumnExpression[Any]]:
        c = self.records.c
        hashed, _ = self.hash_filter(kind)
        keys: dict[str, SQLColumnExpression[Any]] = {
            "organization_id": c.organization_id,
            "kind": literal_column(f"'{kind.value}'", String()),
            "workload": c.workload,
            "provider": c.provider,
            "model": c.model,
            "hash": hashed,
        }
        if hourly:
            keys["hour"] = self.hour
        return keys


RECORDS_TABLE: Table = UsageRecord.__table__  # type: ignore[assignment]
_OVER_RECORDS = _Definitions(RECORDS_TABLE)
_OVER_STAGING = _Definitions(STAGING_TABLE)


def _upsert(
    session: AsyncSession,
    model: type[Any],
    keys: Mapping[str, SQLColumnExpression[Any]],
    values: Aggregates,
    source: FromClause,
    where: list[ColumnElement[bool]],
) -> Insert:
    """INSERT … SELECT the aggregates of the matching records … ON CONFLICT add them to the
    stored ones. Grouped rows come in key order, so concurrent batches lock rollup rows in
    the same order and cannot deadlock each other."""
    grouping = [key for key in keys.values() if not getattr(key, "is_literal", False)]
    grouped = (
        select(*keys.values(), *(aggregate for aggregate, _ in values.values()))
        .select_from(source)
        .where(*where)
        .group_by(*grouping)
        .order_by(*grouping)
    )
    table = model.__table__  # Core, not the ORM's bulk-insert path
    insert = dialect_insert(session, table)
    statement: Insert = insert.from_select([*keys, *values], grouped).on_conflict_do_update(
        index_elements=list(keys),
        set_={
            name: merge(table.c[name], insert.excluded[name]) for name, (_, merge) in values.items()
        },
    )
    return statement


class RollupRepository:
    """Adds a batch's records to the rollups; rebuilds them from the raw records."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, organization_id: uuid.UUID, record_ids: Collection[str]) -> None:
        """Add the records just stored (in this transaction) to every rollup: those the
        staging table holds, which are exactly `record_ids` (`UsageRepository.insert_new`)."""
        if record_ids:
            await self._lock(organization_id, exclusive=False)
            await self._aggregate(organization_id, staged=True)

    async def rebuild(self, organization_id: uuid.UUID, window: Window | None = None) -> int:
        """Recompute an organisation's rollups from its raw records (in this transaction),
        all of them or those of a window of whole hours (after retention dropped records in
        it); return how many records the recomputed rollups sum. Batches of the
        organisation wait meanwhile: one committed between the rebuild's DELETE and its
        INSERT would be counted twice."""
        await self._lock(organization_id, exclusive=True)
        if window is None:
            for model in (UsageRollup, UsageHashRollup, UsageHashTotal):
                await self.session.execute(
                    delete(model).where(model.organization_id == organization_id)
                )
            await self._aggregate(organization_id, staged=False)
            return await self._calls(organization_id, _in(organization_id, _ALL_TIME))
        # The all-time rows of the hashes seen in the window are rebuilt from the hourly ones.
        await self.session.execute(
            delete(T).where(
                T.organization_id == organization_id,
                T.first_hour < window.end,
                T.last_hour >= window.start,
            )
        )
        for model in (UsageRollup, UsageHashRollup):
            await self.session.execute(
                delete(model).where(
                    model.organization_id == organization_id,
                    model.hour >= window.start,
                    model.hour < window.end,
                )
            )
        await self._aggregate(organization_id, staged=False, window=window)
        await self.session.execute(_totals_from_hours(self.session, organization_id))
        return await self._calls(organization_id, _in(organization_id, window))

    async def _calls(self, organization_id: uuid.UUID, where: list[ColumnElement[bool]]) -> int:
        summed = select(func.coalesce(func.sum(UsageRollup.calls), 0)).where(*where)
        return int(await self.session.scalar(summed) or 0)

    async def _lock(self, organization_id: uuid.UUID, *, exclusive: bool) -> None:
        """A transaction-scoped advisory lock on the organisation's rollups: shared by
        ingesting batches, exclusive for a rebuild (PostgreSQL; SQLite has one writer)."""
        if self.session.get_bind().dialect.name != "postgresql":
            return
        function = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
        key = int.from_bytes(organization_id.bytes[-4:], "big", signed=True)
        await self.session.execute(
            select(getattr(func, function)(literal_column(f"{ROLLUP_LOCK_CLASS}, {key}")))
        )

    async def _aggregate(
        self,
        organization_id: uuid.UUID,
        *,
        staged: bool,
        window: Window | None = None,
    ) -> None:
        """Add records to the rollups: the batch's new records (`staged`), or all of the
        organisation's, or those in `window` (then not to the all-time totals, which the
        caller rebuilds from the hourly rows). A batch's are read from the staging table,
        which holds exactly them (a few thousand rows, no index needed): read from
        `usage_records` by id they cost a scan of the organisation's records per batch."""
        if staged:
            over, where = _OVER_STAGING, []
        else:
            over = _OVER_RECORDS
            where = [over.records.c.organization_id == organization_id]
            if window is not None:
                occurred_at = over.records.c.occurred_at
                where += [occurred_at >= window.start, occurred_at < window.end]
        statements = [
            _upsert(self.session, UsageRollup, over.rollup_keys, over.rollup_values,
                    over.records, where),
        ]  # fmt: skip
        for kind in HashKind:
            _, counted = over.hash_filter(kind)
            statements.append(
                _upsert(self.session, UsageHashRollup, over.hash_keys(kind, hourly=True),
                        over.hash_values, over.records, where + counted),
            )  # fmt: skip
            if window is None:
                statements.append(
                    _upsert(self.session, UsageHashTotal, over.hash_keys(kind, hourly=False),
                            over.total_values, over.records, where + counted),
                )  # fmt: skip
        for statement in statements:
            await self.session.execute(statement)


def _totals_from_hours(session: AsyncSession, organization_id: uuid.UUID) -> Insert:
    """INSERT the all-time row of every hash of the organisation that has hourly rows and
    no all-time row, summed from the hourly rows (the same aggregates as at ingest)."""
    keys = [H.organization_id, H.kind, H.workload, H.provider, H.model, H.hash]
    has_total = select(T.hash).where(*(getattr(T, key.key) == key for key in keys)).exists()
    summed = (
        select(
            *keys,
            func.sum(H.calls), func.sum(H.cost_nanos), func.sum(H.prefix_tokens),
            func.min(H.first_record_id), func.max(H.last_record_id),
            func.min(H.hour), func.max(H.hour),
        )
        .where(H.organization_id == organization_id, ~has_total)
        .group_by(*keys)
    )  # fmt: skip
    columns = [key.key for key in keys] + [
        "calls", "cost_nanos", "prefix_tokens", "first_record_id", "last_record_id",
        "first_hour", "last_hour",
    ]  # fmt: skip
    statement: Insert = dialect_insert(session, T.__table__).from_select(columns, summed)
    return statement


# --- reads ---------------------------------------------------------------------------------

R = UsageRollup
H = UsageHashRollup
T = UsageHashTotal


_ALL_TIME = Window(datetime.min.replace(tzinfo=UTC), datetime.max.replace(tzinfo=UTC))


def _in(organization_id: uuid.UUID, window: Window) -> list[ColumnElement[bool]]:
    return [R.organization_id == organization_id, R.hour >= window.start, R.hour < window.end]


class SpendRepository:
    """The aggregates behind the analyses, read from the rollups: their cost grows with the
    number of distinct groups (hours x workloads x models, repeated prompts), not records.
    Windows are read in whole UTC hours (`Window.whole_hours`), the rollups' grain."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def fetch(self, organization_id: uuid.UUID, window: Window) -> SpendData:
        window = window.whole_hours()
        return SpendData(
            window=window,
            groups=await self.groups(organization_id, window),
            days=await self.days(organization_id, window),
            prefixes=await self.repeated_prefixes(organization_id, window),
            duplicates=await self.duplicate_prompts(organization_id, window),
            hours=await self.hours(organization_id, window),
            fits=await self.cost_fits(organization_id, window),
        )

    async def groups(self, organization_id: uuid.UUID, window: Window) -> list[GroupRow]:
        keys = (R.workload, R.provider, R.model, R.status, R.cost_source)
        statement = (
            select(
                *keys,
                func.sum(R.calls),
                *(func.sum(getattr(R, name)) for name in TOKEN_COLUMNS),
                func.sum(R.cost_nanos),
                func.sum(R.calls_with_end_user),
                func.min(R.first_record_id),
                func.max(R.last_record_id),
                func.max(R.max_prompt_tokens),
                func.max(R.max_output_tokens),
                func.sum(R.latency_ms_sum),
                func.sum(R.calls_with_latency),
            )
            .where(*_in(organization_id, window))
            .group_by(*keys)
            .order_by(*keys)
        )
        return [
            GroupRow(
                workload=row[0],
                provider=row[1],
                model=row[2],
                status=row[3],
                cost_source=row[4],
                calls=int(row[5]),
                tokens=Tokens(*(int(value) for value in row[6:11])),
                cost_nanos=int(row[11]),
                calls_with_end_user=int(row[12]),
                first_record_id=row[13],
                last_record_id=row[14],
                max_prompt_tokens=int(row[15]),
                max_output_tokens=int(row[16]),
                latency_ms_sum=int(row[17]),
                calls_with_latency=int(row[18]),
            )
            for row in (await self.session.execute(statement)).all()
        ]

    async def totals(
        self,
        organization_id: uuid.UUID,
        window: Window,
        *,
        workload: str | None = None,
        model: str | None = None,
    ) -> WindowTotals:
        """Calls, failed calls and cost of a window of whole hours, optionally of one
        workload or one model (alert rules read this)."""
        failed = case((R.status != CallStatus.OK.value, R.calls), else_=0)
        where = _in(organization_id, window)
        if workload is not None:
            where.append(R.workload == workload)
        if model is not None:
            where.append(R.model == model)
        statement = select(
            func.coalesce(func.sum(R.calls), 0),
            func.coalesce(func.sum(failed), 0),
            func.coalesce(func.sum(R.cost_nanos), 0),
        ).where(*where)
        calls, failed_calls, cost = (await self.session.execute(statement)).one()
        return WindowTotals(int(calls), int(failed_calls), int(cost))

    async def hours(self, organization_id: uuid.UUID, window: Window) -> list[HourRow]:
        hour = utc_hour(R.hour)
        keys = (R.workload, R.provider, R.model)
        statement = (
            select(*keys, hour, func.sum(R.calls))
            .where(*_in(organization_id, window))
            .group_by(*keys, hour)
            .order_by(*keys, hour)
        )
        return [
            HourRow(row[0], row[1], row[2], int(row[3]), int(row[4]))
            for row in (await self.session.execute(statement)).all()
        ]

    async def cost_fits(self, organization_id: uuid.UUID, window: Window) -> list[FitRow]:
        """Per model, the sums a least-squares fit of reported cost on tokens needs."""
        keys = (R.provider, R.model)
        sums = ("c", *FIT_SUMS)
        statement = (
            select(*keys, func.sum(R.calls), *(func.sum(getattr(R, f"fit_{s}")) for s in sums))
            .where(*_in(organization_id, window), R.cost_source == CostSource.REPORTED.value)
            .group_by(*keys)
            .order_by(*keys)
        )
        return [
            FitRow(
                provider=row[0],
                model=row[1],
                calls=int(row[2]),
                sums={name: float(value) for name, value in zip(sums, row[3:], strict=True)},
            )
            for row in (await self.session.execute(statement)).all()
        ]

    async def breakdown(self, organization_id: uuid.UUID, window: Window) -> list[BreakdownRow]:
        """Spend per UTC day, workload, provider and model: what the spend page draws."""
        day = utc_day(R.hour)
        keys = (R.workload, R.provider, R.model)

        def calls_costed(source: CostSource) -> Any:
            return func.sum(case((R.cost_source == source.value, R.calls), else_=0))

        statement = (
            select(
                day,
                *keys,
                func.sum(R.calls),
                func.sum(R.input_tokens + R.cached_input_tokens + R.cache_write_tokens),
                func.sum(R.output_tokens + R.reasoning_tokens),
                func.sum(R.cost_nanos),
                calls_costed(CostSource.UNPRICED),
                calls_costed(CostSource.REPORTED),
            )
            .where(*_in(organization_id, window.whole_hours()))
            .group_by(day, *keys)
            .order_by(day, *keys)
        )
        return [
            BreakdownRow(row[0], row[1], row[2], row[3], *(int(value) for value in row[4:]))
            for row in (await self.session.execute(statement)).all()
        ]

    async def latest_hour(self, organization_id: uuid.UUID) -> datetime | None:
        """The last hour with usage (the spend page opens on its month)."""
        statement = select(func.max(R.hour)).where(R.organization_id == organization_id)
        latest: datetime | None = await self.session.scalar(statement)
        return latest.replace(tzinfo=UTC) if latest and latest.tzinfo is None else latest

    async def months(self, organization_id: uuid.UUID) -> list[str]:
        """The UTC months (YYYY-MM) with usage, newest first (from the daily rollup keys)."""
        month = func.substr(utc_day(R.hour), 1, 7)
        statement = select(month).where(R.organization_id == organization_id).distinct()
        return sorted((await self.session.scalars(statement)).all(), reverse=True)

    async def days(self, organization_id: uuid.UUID, window: Window) -> list[DayRow]:
        day = utc_day(R.hour)
        statement = (
            select(day, func.sum(R.calls), func.sum(R.cost_nanos))
            .where(*_in(organization_id, window))
            .group_by(day)
            .order_by(day)
        )
        return [
            DayRow(day=row[0], calls=int(row[1]), cost_nanos=int(row[2]))
            for row in (await self.session.execute(statement)).all()
        ]

    def _repeated(
        self,
        organization_id: uuid.UUID,
        kind: HashKind,
        window: Window,
        min_calls: int,
        *among: ColumnElement[bool],
    ) -> Executable:
        """Hashes of `kind` with at least `min_calls` calls in the window, visiting only the
        hashes ever seen twice (the literal 2 matches the partial index's predicate)."""
        if min_calls < 2:
            raise ValueError("repeats need min_calls >= 2")
        keys = (H.workload, H.provider, H.model, H.hash)
        joined = and_(
            H.organization_id == T.organization_id,
            H.kind == T.kind,
            H.workload == T.workload,
            H.provider == T.provider,
            H.model == T.model,
            H.hash == T.hash,
        )
        return (
            select(
                *keys,
                func.sum(H.calls),
                func.count(distinct(utc_day(H.hour))),
                func.sum(H.prefix_tokens),
                func.sum(H.cost_nanos),
                func.min(H.first_record_id),
                func.max(H.last_record_id),
            )
            .select_from(T)
            .join(H, joined)
            .where(
                T.organization_id == organization_id,
                T.kind == kind.value,
                T.calls >= literal_column("2"),
                H.hour >= window.start,
                H.hour < window.end,
                *among,
            )
            .group_by(*keys)
            .having(func.sum(H.calls) >= min_calls)
            .order_by(*keys)
        )

    async def repeated_prefixes(
        self, organization_id: uuid.UUID, window: Window, *, min_calls: int = 2
    ) -> list[PrefixRow]:
        statement = self._repeated(organization_id, HashKind.PREFIX, window, min_calls)
        return [
            PrefixRow(
                row[0],
                row[1],
                row[2],
                row[3],
                int(row[4]),
                int(row[5]),
                int(row[6]),
                row[8],
                row[9],
            )
            for row in (await self.session.execute(statement)).all()
        ]

    async def duplicate_prompts(
        self, organization_id: uuid.UUID, window: Window
    ) -> list[DuplicateRow]:
        """Prompts sent at least twice in the window. A prompt whose whole lifetime (first to
        last hour) lies inside the window is its all-time row; only those that straddle an
        edge are summed from their hourly rows."""
        inside = select(T.workload, T.provider, T.model, T.hash, T.calls, T.cost_nanos,
                        T.first_record_id, T.last_record_id).where(
            T.organization_id == organization_id,
            T.kind == HashKind.PROMPT.value,
            T.calls >= literal_column("2"),
            T.first_hour >= window.start,
            T.last_hour < window.end,
        )  # fmt: skip
        straddling = self._repeated(
            organization_id, HashKind.PROMPT, window, 2,
            T.last_hour >= window.start, T.first_hour < window.end,
            or_(T.first_hour < window.start, T.last_hour >= window.end),
        )  # fmt: skip
        rows = [
            DuplicateRow(row[0], row[1], row[2], row[3], int(row[4]), int(row[5]), row[6], row[7])
            for row in (await self.session.execute(inside)).all()
        ] + [
            DuplicateRow(row[0], row[1], row[2], row[3], int(row[4]), int(row[7]), row[8], row[9])
            for row in (await self.session.execute(straddling)).all()
        ]
        return sorted(rows, key=lambda r: (r.workload, r.provider, r.model, r.prompt_hash))


@dataclass(frozen=True, slots=True)
class Meter:
    """What an organisation used in a period: the billing meter's reading."""

    window: Window
    records: int
    tokens: Tokens
    cost_nanos: int


class MeterRepository:
    """Billing-grade meter reads: records and tokens per organisation per period, summed
    from the hourly rollups (a month is at most 744 hours x the organisation's groups)."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def read(self, organization_id: uuid.UUID, window: Window) -> Meter:
        window = window.whole_hours()
        statement = select(
            func.coalesce(func.sum(R.calls), 0),
            *(func.coalesce(func.sum(getattr(R, name)), 0) for name in TOKEN_COLUMNS),
            func.coalesce(func.sum(R.cost_nanos), 0),
        ).where(*_in(organization_id, window))
        row = (await self.session.execute(statement)).one()
        return Meter(
            window=window,
            records=int(row[0]),
            tokens=Tokens(*(int(value) for value in row[1:6])),
            cost_nanos=int(row[6]),
        )


@dataclass(frozen=True, slots=True)
class WorkloadUsage:
    """One workload over a window, every model it used: what verifying a saving compares.
    Cost per call counts priced calls only (an unpriced call's cost is not known)."""

    window: Window
    calls: int
    priced_calls: int
    cost_nanos: int
    failed_calls: int
    ok_output_tokens: int

    @property
    def ok_calls(self) -> int:
        return self.calls - self.failed_calls


class WorkloadMeterRepository:
    """A workload's calls, cost, failures and output over a window, from the hourly rollups."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def read(
        self, organization_id: uuid.UUID, workload: str, window: Window
    ) -> WorkloadUsage:
        window = window.whole_hours()
        priced = R.cost_source != CostSource.UNPRICED.value
        failed = R.status != CallStatus.OK.value

        def total(column: Any, *where: ColumnElement[bool]) -> Any:
            value = case((and_(*where), column), else_=0) if where else column
            return func.coalesce(func.sum(value), 0)

        statement = select(
            total(R.calls),
            total(R.calls, priced),
            total(R.cost_nanos, priced),
            total(R.calls, failed),
            total(R.output_tokens, ~failed),
        ).where(*_in(organization_id, window), R.workload == workload)
        row = (await self.session.execute(statement)).one()
        return WorkloadUsage(window, *(int(value) for value in row))
