"""Records a month, by plan (BRIEF §4b): new records stored per organisation per UTC
calendar month. Counted in Redis as records are accepted (duplicates and rolled-back
batches give their units back), so a quota holds across instances without counting rows.
A Redis that loses its data forgets the month's count, and while Redis is unreachable
records are accepted uncounted (logged): the quota is a guard rail; what is billed is read
from the database."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

import structlog
from redis.exceptions import RedisError

from apex.billing.plans import Plan
from apex.kit.limits import Quota

MONTH_TTL_SECONDS = 32 * 86_400
log = structlog.get_logger(__name__)


WARN_AT_PERCENT = (80, 100)


def thresholds_crossed(before: int, after: int, limit: int) -> list[int]:
    """The warning thresholds (percent of `limit`) that a count going from `before` to
    `after` reached."""
    return [pct for pct in WARN_AT_PERCENT if before * 100 < pct * limit <= after * 100]


class QuotaWarnings(Protocol):
    async def reached(
        self, organization_id: uuid.UUID, plan: Plan, period: str, percent: int
    ) -> None: ...


@dataclass
class RecordQuota:
    quota: Quota
    plan: Plan
    organization_id: uuid.UUID
    now: datetime
    granted: int = 0
    warnings: QuotaWarnings | None = None
    crossed: list[int] = field(default_factory=list, init=False)  # thresholds this batch reached

    @property
    def period(self) -> str:
        return f"{self.now:%Y-%m}"

    @property
    def limit(self) -> int | None:
        return self.plan.records_per_month

    async def take(self, wanted: int) -> int:
        """How many of `wanted` new records fit this month (all, on an unlimited plan)."""
        if self.limit is None:
            return wanted
        try:
            granted, used = await self.quota.take(
                "records", str(self.organization_id), self.period,
                limit=self.limit, wanted=wanted, ttl_seconds=MONTH_TTL_SECONDS,
            )  # fmt: skip
        except RedisError as exc:
            log.warning("record_quota_unavailable", error=type(exc).__name__)
            return wanted
        self.granted += granted
        self.crossed += thresholds_crossed(used - granted, used, self.limit)
        return granted

    async def warn(self) -> None:
        """Tell the organisation about the thresholds this batch reached (after its commit)."""
        if self.warnings is None:
            return
        for percent in self.crossed:
            try:
                await self.warnings.reached(self.organization_id, self.plan, self.period, percent)
            except RedisError as exc:
                log.warning("record_quota_warning_unavailable", error=type(exc).__name__)

    async def give_back(self, units: int) -> None:
        if self.limit is None or units <= 0:
            return
        units = min(units, self.granted)
        self.granted -= units
        try:
            await self.quota.give_back("records", str(self.organization_id), self.period, units)
        except RedisError as exc:
            log.warning("record_quota_unavailable", error=type(exc).__name__)

    def refusal(self) -> str:
        upgrade = self.plan.next_tier
        hint = f"; the {upgrade.value.capitalize()} plan includes more" if upgrade else ""
        return (
            f"Your plan's quota of {self.limit:,} records a month is used up for "
            f"{self.now:%B %Y}{hint}. This record was not stored."
        )
