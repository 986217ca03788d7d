"""All SQL over usage records and price overrides, always scoped to one organisation."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, Insert, String, distinct, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from apex.kit.repository import Repository
from apex.usage.models import PriceOverride, UsageRecord
from apex.usage.pricing import Tokens
from apex.usage.spend import DayRow, DuplicateRow, GroupRow, PrefixRow, SpendData, Window


def _insert_ignoring_duplicates(session: AsyncSession) -> Insert:
    """INSERT … ON CONFLICT (organization_id, record_id) DO NOTHING for the session's dialect."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(UsageRecord).on_conflict_do_nothing(
            index_elements=["organization_id", "record_id"]
        )
    return sqlite.insert(UsageRecord).on_conflict_do_nothing(
        index_elements=["organization_id", "record_id"]
    )


class UsageRepository(Repository[UsageRecord]):
    model = UsageRecord

    async def insert_new(self, rows: Sequence[dict[str, Any]]) -> set[str]:
        """Insert the rows whose record id the organisation has not sent before; return the
        ids inserted. SQLAlchemy batches the rows into multi-row INSERTs ("insertmanyvalues"),
        and the conflict target is the dedup key, so a retried batch adds nothing."""
        if not rows:
            return set()
        statement = _insert_ignoring_duplicates(self.session).returning(UsageRecord.record_id)
        result = await self.session.execute(statement, list(rows))
        return set(result.scalars().all())


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


class utc_day(FunctionElement[str]):
    """The UTC calendar day of a timestamp column as 'YYYY-MM-DD', on either backend."""

    type = String()
    inherit_cache = True
    name = "utc_day"


@compiles(utc_day, "postgresql")
def _utc_day_postgresql(element: utc_day, compiler: Any, **kw: Any) -> str:
    return f"to_char({compiler.process(element.clauses, **kw)} AT TIME ZONE 'UTC', 'YYYY-MM-DD')"


@compiles(utc_day, "sqlite")
def _utc_day_sqlite(element: utc_day, compiler: Any, **kw: Any) -> str:
    # Stored as 'YYYY-MM-DD HH:MM:SS…' in UTC (ingestion converts every timestamp to UTC).
    return f"substr({compiler.process(element.clauses, **kw)}, 1, 10)"


_TOKEN_SUMS = (
    func.sum(UsageRecord.input_tokens),
    func.sum(UsageRecord.cached_input_tokens),
    func.sum(UsageRecord.cache_write_tokens),
    func.sum(UsageRecord.output_tokens),
    func.sum(UsageRecord.reasoning_tokens),
)


class SpendRepository:
    """The aggregates behind the analyses, computed where the data lives."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    def _in(self, organization_id: uuid.UUID, window: Window) -> list[ColumnElement[bool]]:
        return [
            UsageRecord.organization_id == organization_id,
            UsageRecord.occurred_at >= window.start,
            UsageRecord.occurred_at < window.end,
        ]

    async def fetch(self, organization_id: uuid.UUID, window: Window) -> SpendData:
        return SpendData(
            window=window,
            groups=await self.groups(organization_id, window),
            days=await self.days(organization_id, window),
            prefixes=await self.repeated_prefixes(organization_id, window),
            duplicates=await self.duplicate_prompts(organization_id, window),
        )

    async def groups(self, organization_id: uuid.UUID, window: Window) -> list[GroupRow]:
        keys = (UsageRecord.workload, UsageRecord.provider, UsageRecord.model, UsageRecord.status)
        statement = (
            select(
                *keys,
                func.count(),
                *_TOKEN_SUMS,
                func.sum(UsageRecord.cost_nanos),
                func.count(UsageRecord.end_user),
                func.min(UsageRecord.record_id),
                func.max(UsageRecord.record_id),
            )
            .where(*self._in(organization_id, window))
            .group_by(*keys)
            .order_by(*keys)
        )
        return [
            GroupRow(
                workload=row[0],
                provider=row[1],
                model=row[2],
                status=row[3],
                calls=int(row[4]),
                tokens=Tokens(*(int(value) for value in row[5:10])),
                cost_nanos=int(row[10]),
                calls_with_end_user=int(row[11]),
                first_record_id=row[12],
                last_record_id=row[13],
            )
            for row in (await self.session.execute(statement)).all()
        ]

    async def days(self, organization_id: uuid.UUID, window: Window) -> list[DayRow]:
        day = utc_day(UsageRecord.occurred_at)
        statement = (
            select(day, func.count(), func.sum(UsageRecord.cost_nanos))
            .where(*self._in(organization_id, window))
            .group_by(day)
            .order_by(day)
        )
        return [
            DayRow(day=row[0], calls=int(row[1]), cost_nanos=int(row[2]))
            for row in (await self.session.execute(statement)).all()
        ]

    async def repeated_prefixes(
        self, organization_id: uuid.UUID, window: Window, *, min_calls: int = 2
    ) -> list[PrefixRow]:
        keys = (
            UsageRecord.workload,
            UsageRecord.provider,
            UsageRecord.model,
            UsageRecord.prefix_hash,
        )
        statement = (
            select(
                *keys,
                func.count(),
                func.count(distinct(utc_day(UsageRecord.occurred_at))),
                func.sum(UsageRecord.prefix_tokens),
                func.min(UsageRecord.record_id),
                func.max(UsageRecord.record_id),
            )
            .where(
                *self._in(organization_id, window),
                UsageRecord.prefix_hash.is_not(None),
                UsageRecord.cached_input_tokens == 0,
                UsageRecord.cache_write_tokens == 0,
            )
            .group_by(*keys)
            .having(func.count() >= min_calls)
            .order_by(*keys)
        )
        return [
            PrefixRow(
                row[0],
                row[1],
                row[2],
                str(row[3]),
                int(row[4]),
                int(row[5]),
                int(row[6]),
                row[7],
                row[8],
            )
            for row in (await self.session.execute(statement)).all()
        ]

    async def duplicate_prompts(
        self, organization_id: uuid.UUID, window: Window
    ) -> list[DuplicateRow]:
        keys = (
            UsageRecord.workload,
            UsageRecord.provider,
            UsageRecord.model,
            UsageRecord.prompt_hash,
        )
        statement = (
            select(
                *keys,
                func.count(),
                func.sum(UsageRecord.cost_nanos),
                func.min(UsageRecord.record_id),
                func.max(UsageRecord.record_id),
            )
            .where(
                *self._in(organization_id, window),
                UsageRecord.prompt_hash.is_not(None),
                UsageRecord.status == "ok",
            )
            .group_by(*keys)
            .having(func.count() >= 2)
            .order_by(*keys)
        )
        return [
            DuplicateRow(
                row[0], row[1], row[2], str(row[3]), int(row[4]), int(row[5]), row[6], row[7]
            )
            for row in (await self.session.execute(statement)).all()
        ]
