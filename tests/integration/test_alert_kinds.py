"""A spend-anomaly rule against the organisation's own baseline, evaluated on PostgreSQL by
two evaluators at once, at a clock the test sets. Expected values are worked out by hand."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select, text

from apex.alerts import service as alerts
from apex.alerts.models import AlertDelivery, AlertEvent
from apex.kit.db import Database
from apex.settings import Settings
from apex.usage import service as usage

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)  # on the hour: the window is [11:00, 12:00)
CENT = "0.01"


def calls(prefix: str, start: datetime, hours: int, per_hour: int) -> list[dict[str, Any]]:
    return [{"id": f"{prefix}-{h}-{n}", "timestamp": (start + timedelta(hours=h, minutes=n)
             ).isoformat(), "provider": "openai", "model": "gpt-4o", "workload": "chat",
             "input_tokens": 100, "output_tokens": 10, "cost_usd": CENT}
            for h in range(hours) for n in range(per_hour)]  # fmt: skip


async def _organization(database: Database) -> uuid.UUID:
    org = uuid.uuid4()
    async with database.unit_of_work() as session:
        await session.execute(
            text("INSERT INTO organizations (id, name, slug, tier, created_at, updated_at) "
                 "VALUES (:id, 'Anomaly', :slug, 'mid', :now, :now)"),
            {"id": org, "slug": org.hex, "now": NOW - timedelta(days=30)},
        )  # fmt: skip
    return org


async def _ingest(database: Database, org: uuid.UUID, records: list[dict[str, Any]]) -> None:
    async with database.unit_of_work() as session:
        report = await usage.ingest(session, org, records)
    assert report.accepted == len(records), report.results[:3]


def test_spend_anomaly_fires_once_against_the_usual_level(database_url: str) -> None:
    async def scenario() -> None:
        database = Database(Settings(database_url=database_url, environment="test"))
        try:
            org = await _organization(database)
            week_before = NOW - timedelta(hours=1) - timedelta(days=7)
            # The baseline: the 168 hours before the window, one $0.01 call each: $0.01 usual.
            await _ingest(database, org, calls("base", week_before, 168, 1))
            async with database.unit_of_work() as session:
                rule, _ = await alerts.create_rule(
                    session, org,
                    {"name": "3x usual", "kind": "spend_anomaly", "threshold": Decimal(3),
                     "window_minutes": 60, "channels": [{"type": "email", "to": "o@x.test"}]},
                    actor_id=uuid.uuid4(), now=NOW, allow_private=False,
                )  # fmt: skip
            rule_id = rule.id
            # Two calls in the window: 2x the usual, under 3x: nothing fires.
            await _ingest(database, org, calls("now", NOW - timedelta(hours=1), 1, 2))
            first = await alerts.evaluate_all(database, NOW)
            assert [(e.value, e.outcome) for e in first if e.rule_id == rule_id] == [
                (Decimal("2.000000"), "ok")]  # fmt: skip
            # Five calls: 5x. Two evaluators at once fire it once.
            await _ingest(database, org, calls("spike", NOW - timedelta(minutes=50), 1, 3))
            both = await asyncio.gather(alerts.evaluate_all(database, NOW),
                                        alerts.evaluate_all(database, NOW))  # fmt: skip
            outcomes = sorted(e.outcome for run in both for e in run if e.rule_id == rule_id)
            assert outcomes in (["fired", "firing"], ["fired"])
            async with database.unit_of_work() as session:
                events = (await session.scalars(
                    select(AlertEvent).where(AlertEvent.rule_id == rule_id))).all()  # fmt: skip
                counted = select(func.count()).select_from(AlertDelivery)
                notices = await session.scalar(counted.where(AlertDelivery.organization_id == org))
            assert [(e.value, e.threshold, e.resolved_at) for e in events] == [
                (Decimal("5.000000"), Decimal(3), None)]  # fmt: skip
            assert notices == 1  # one firing notice, to the one channel
        finally:
            await database.dispose()

    asyncio.run(scenario())
