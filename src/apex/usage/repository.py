"""All SQL over usage records and price overrides, always scoped to one organisation."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from apex.kit.repository import Repository
from apex.usage.models import PriceOverride, UsageRecord


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

    async def count_for(self, organization_id: uuid.UUID) -> int:
        return await self.count(UsageRecord.organization_id == organization_id)


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
