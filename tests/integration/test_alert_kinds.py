"""Alert rules on PostgreSQL at a clock the test sets: a spend anomaly against the
organisation's own baseline (two evaluators at once), a quota rule on the Free plan's
monthly records, quiet hours that hold a notice until they end, and a fleet of evaluators
sharing the rules. Expected values are worked out by hand."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select, text

from apex.alerts import service as alerts
from apex.alerts.delivery import deliver_due
from apex.alerts.models import AlertDelivery, AlertEvent
from apex.alerts.schemas import RuleIn
from apex.kit.clock import FrozenClock
from apex.kit.db import Database
from apex.kit.mail import FileMailer
from apex.kit.sealing import Sealer
from apex.settings import Settings
from apex.usage import service as usage

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)  # on the hour: the window is [11:00, 12:00)
CENT = "0.01"


def calls(prefix: str, start: datetime, hours: int, per_hour: int) -> list[dict[str, Any]]:
    return [{"id": f"{prefix}-{h}-{n}", "timestamp": (start + timedelta(hours=h, minutes=n)
             ).isoformat(), "provider": "openai", "model": "gpt-4o", "workload": "chat",
             "input_tokens": 100, "output_tokens": 10, "cost_usd": CENT}
            for h in range(hours) for n in range(per_hour)]  # fmt: skip


async def _organization(database: Database, tier: str = "mid") -> uuid.UUID:
    org = uuid.uuid4()
    async with database.unit_of_work() as session:
        await session.execute(
            text("INSERT INTO organizations (id, name, slug, tier, created_at, updated_at) "
                 "VALUES (:id, 'Alerted', :slug, :tier, :now, :now)"),
            {"id": org, "slug": org.hex, "tier": tier, "now": NOW - timedelta(days=30)},
        )  # fmt: skip
    return org


async def _rule(database: Database, org: uuid.UUID, fields: dict[str, Any]) -> uuid.UUID:
    async with database.unit_of_work() as session:
        body = RuleIn.model_validate({"channels": [{"type": "email", "to": "o@x.test"}], **fields})
        rule, _ = await alerts.create_rule(
            session, org, body.model_dump(mode="json") | {"threshold": body.threshold},
            actor_id=uuid.uuid4(), now=NOW, allow_private=False, sealer=Sealer(None),
        )  # fmt: skip
    return rule.id


def _outcomes(evaluations: list[alerts.Evaluation], rule_id: uuid.UUID) -> list[tuple[Any, str]]:
    return [(e.value, e.outcome) for e in evaluations if e.rule_id == rule_id]


async def _ingest(database: Database, org: uuid.UUID, records: list[dict[str, Any]]) -> None:
    async with database.unit_of_work() as session:
        report = await usage.ingest(session, org, records, now=NOW)
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
                    actor_id=uuid.uuid4(), now=NOW, allow_private=False, sealer=Sealer(None),
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


def test_quota_rule_fires_on_the_share_of_the_plans_monthly_records(database_url: str) -> None:
    async def scenario() -> None:
        database = Database(Settings(database_url=database_url, environment="test"))
        try:
            org = await _organization(database, tier="free")  # 100,000 records a month
            rule_id = await _rule(database, org, {"name": "half a percent", "kind": "quota",
                                                  "threshold": Decimal("0.5")})  # fmt: skip
            # 450 records this month (and 900 last month, which do not count): 0.45%.
            await _ingest(database, org, calls("old", NOW - timedelta(days=25), 9, 100))
            await _ingest(database, org, calls("this", NOW - timedelta(hours=9), 9, 50))
            ok = await alerts.evaluate_all(database, NOW)
            assert _outcomes(ok, rule_id) == [(Decimal("0.450000"), "ok")]
            # 150 more this morning: 600 of 100,000 = 0.6% > 0.5%.
            await _ingest(database, org, calls("more", NOW - timedelta(hours=3), 2, 75))
            fired = await alerts.evaluate_all(database, NOW)
            assert _outcomes(fired, rule_id) == [(Decimal("0.600000"), "fired")]
        finally:
            await database.dispose()

    asyncio.run(scenario())


def _mails(directory: Path) -> list[EmailMessage]:
    return [BytesParser(policy=default).parsebytes(p.read_bytes()) for p in directory.iterdir()]


def test_quiet_hours_hold_the_notice_until_they_end(database_url: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        database = Database(Settings(database_url=database_url, environment="test"))
        settings = Settings(database_url=database_url, environment="test")
        mailer, clock = FileMailer(tmp_path, "apex@x.test"), FrozenClock(NOW)
        try:
            org = await _organization(database)
            quiet = {"start_hour": 11, "end_hour": 13}
            rule_id = await _rule(database, org, {
                "name": "quiet at noon", "kind": "spend", "threshold": Decimal("0.05"),
                "window_minutes": 60, "quiet_hours": quiet})  # fmt: skip
            await _ingest(database, org, calls("burst", NOW - timedelta(hours=1), 1, 10))  # $0.10
            fired = await alerts.evaluate_all(database, NOW)
            assert _outcomes(fired, rule_id) == [(Decimal("0.100000"), "fired")]
            async with httpx.AsyncClient() as http:
                # 12:00 and 12:59 are quiet: the notice waits, it is not dropped.
                assert await deliver_due(database, clock, mailer, http, settings) == 0
                clock.advance(59 * 60)
                assert await deliver_due(database, clock, mailer, http, settings) == 0
                assert await asyncio.to_thread(_mails, tmp_path) == []
                clock.advance(60)  # 13:00: the quiet hours are over
                assert await deliver_due(database, clock, mailer, http, settings) == 1
                assert await deliver_due(database, clock, mailer, http, settings) == 0
            [mail] = await asyncio.to_thread(_mails, tmp_path)
            assert (mail["To"], "quiet at noon" in mail["Subject"]) == ("o@x.test", True)
            async with database.unit_of_work() as session:
                of_org = select(AlertDelivery).where(AlertDelivery.organization_id == org)
                [delivery] = (await session.scalars(of_org)).all()
            assert (delivery.status, delivery.delivered_at) == (
                "delivered",
                NOW + timedelta(hours=1),
            )
        finally:
            await database.dispose()

    asyncio.run(scenario())


def test_a_fleet_of_evaluators_shares_the_rules(database_url: str) -> None:
    """Three workers' passes at once evaluate each due rule once, not three times; a rule
    evaluated less than `every` ago is left until it is due again."""

    async def scenario() -> None:
        database = Database(Settings(database_url=database_url, environment="test"))
        every = timedelta(seconds=60)
        try:
            org = await _organization(database)
            rule_ids = {await _rule(database, org, {"name": f"spend {n}", "kind": "spend",
                                                    "threshold": Decimal(n + 1)})
                        for n in range(6)}  # fmt: skip

            async def fleet(at: datetime) -> list[uuid.UUID]:
                passes = await asyncio.gather(
                    *(alerts.evaluate_all(database, at, every) for _ in range(3)))  # fmt: skip
                return [e.rule_id for run in passes for e in run if e.rule_id in rule_ids]

            first = await fleet(NOW)
            assert sorted(first) == sorted(rule_ids)  # each of the six exactly once
            assert await fleet(NOW + timedelta(seconds=30)) == []  # none is due yet
            again = await fleet(NOW + timedelta(seconds=61))
            assert sorted(again) == sorted(rule_ids)
        finally:
            await database.dispose()

    asyncio.run(scenario())
