"""All SQL of product telemetry."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from apex.kit.db import dialect_insert
from apex.kit.sql import utc_day, utc_hour
from apex.observability.models import TelemetryPoint


class TelemetryRepository:
    def __init__(self, session: Any) -> None:
        self.session = session

    async def add_many(self, points: Sequence[dict[str, Any]]) -> None:
        """Store points; one already stored (same id: a batch written again) is skipped."""
        if points:
            statement = dialect_insert(self.session, TelemetryPoint).on_conflict_do_nothing(
                index_elements=["id"]
            )
            await self.session.execute(statement, list(points))

    async def sums(
        self,
        organization_id: uuid.UUID,
        metric: str,
        since: datetime,
        until: datetime,
        bucket: str,
    ) -> list[tuple[str, int, int]]:
        """(UTC day, hour or -1 by day, sum) of the metric's points in [since, until)."""
        day = utc_day(TelemetryPoint.at)
        keys: tuple[Any, ...] = (day, utc_hour(TelemetryPoint.at)) if bucket == "hour" else (day,)
        statement = (
            select(*keys, func.sum(TelemetryPoint.value))
            .where(
                TelemetryPoint.organization_id == organization_id,
                TelemetryPoint.metric == metric,
                TelemetryPoint.at >= since,
                TelemetryPoint.at < until,
            )
            .group_by(*keys)
            .order_by(*keys)
        )
        rows = (await self.session.execute(statement)).all()
        return [(row[0], int(row[1]) if bucket == "hour" else -1, int(row[-1])) for row in rows]
