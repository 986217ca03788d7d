"""Evaluating alert rules: measure, compare, fire or resolve, and queue the notices.

Each rule is evaluated in a transaction of its own that locks the rule's row, so two
workers evaluating at once take turns and the second sees the event the first opened; a
unique index on the open event of a rule backs that up. Notices are queued as
`AlertDelivery` rows in the same transaction as the event, and sent by `delivery.py`:
nothing fires without its notices, and no notice goes out for an event that rolled back.

Values are read from the hourly usage rollups, so a window of N minutes covers the whole
UTC hours it touches (from the top of the hour N minutes ago to now).
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from apex.alerts.delivery import DeliveryRefused, check_url
from apex.alerts.models import (
    AlertDelivery,
    AlertEvent,
    AlertKind,
    AlertRule,
    ChannelType,
    DeliveryStatus,
    Notice,
)
from apex.alerts.repository import AlertEventRepository, AlertRuleRepository
from apex.alerts.schemas import MAX_PERCENT, PERCENT_KINDS
from apex.audit import service as audit
from apex.billing.plans import plan_for
from apex.identity.repository import OrganizationRepository
from apex.kit.db import Database
from apex.kit.errors import Conflict, ValidationFailed
from apex.kit.sealing import Sealer
from apex.usage.models import nanos_to_usd
from apex.usage.rollups import SpendRepository
from apex.usage.spend import Window, WindowTotals, month_start

VALUE_PLACES = Decimal("0.000001")
log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Evaluation:
    rule_id: uuid.UUID
    value: Decimal | None
    outcome: str  # "fired", "resolved", "firing", "pending", "ok"


BASELINE_DAYS = 7


def measure(rule: AlertRule, totals: WindowTotals) -> Decimal | None:
    """The value of a spend or error-rate rule over its window; None when there is too
    little traffic to judge."""
    if rule.kind == AlertKind.SPEND:
        return nanos_to_usd(totals.cost_nanos).quantize(VALUE_PLACES)
    if totals.calls == 0 or totals.calls < rule.min_calls:
        return None
    return (Decimal(totals.failed_calls * 100) / totals.calls).quantize(VALUE_PLACES)


def anomaly(
    window: WindowTotals, baseline: WindowTotals, windows_in_baseline: int
) -> Decimal | None:
    """Spend in the window as a multiple of the average window of the baseline (the
    `BASELINE_DAYS` before it); None without any baseline spend to compare with."""
    if baseline.cost_nanos == 0 or windows_in_baseline == 0:
        return None
    usual = Decimal(baseline.cost_nanos) / windows_in_baseline
    return (Decimal(window.cost_nanos) / usual).quantize(VALUE_PLACES)


def quota_used(records: int, quota: int | None) -> Decimal | None:
    """Percent of the monthly record quota used; None on a plan without a quota."""
    if not quota:
        return None
    return (Decimal(records * 100) / quota).quantize(VALUE_PLACES)


async def _value(session: AsyncSession, rule: AlertRule, now: datetime) -> Decimal | None:
    spend = SpendRepository(session)
    scope = {"workload": rule.workload, "model": rule.model}
    window = Window(now - timedelta(minutes=rule.window_minutes), now).whole_hours()
    if rule.kind == AlertKind.QUOTA:
        month = Window(month_start(now), now).whole_hours()
        used = await spend.totals(rule.organization_id, month)
        organization = await OrganizationRepository(session).get(rule.organization_id)
        tier = organization.tier if organization is not None else "free"
        return quota_used(used.calls, plan_for(tier).records_per_month)
    totals = await spend.totals(rule.organization_id, window, **scope)
    if rule.kind != AlertKind.SPEND_ANOMALY:
        return measure(rule, totals)
    length = window.end - window.start
    before = Window(window.start - timedelta(days=BASELINE_DAYS), window.start)
    baseline = await spend.totals(rule.organization_id, before, **scope)
    return anomaly(totals, baseline, int(timedelta(days=BASELINE_DAYS) / length))


def in_quiet_hours(rule: AlertRule, instant: datetime) -> bool:
    start, end = rule.quiet_start_hour, rule.quiet_end_hour
    if start is None or end is None or start == end:
        return False
    hour = instant.hour
    return start <= hour < end if start < end else hour >= start or hour < end


def release_time(rule: AlertRule, now: datetime) -> datetime:
    """When a notice queued now may go out: now, or when the rule's quiet hours end (UTC)."""
    if not in_quiet_hours(rule, now):
        return now
    assert rule.quiet_end_hour is not None
    release = now.replace(hour=rule.quiet_end_hour, minute=0, second=0, microsecond=0)
    return release if release > now else release + timedelta(days=1)


def target_of(channel: dict[str, str]) -> str:
    return channel["to"] if channel["type"] == ChannelType.EMAIL else channel["url"]


async def queue_notices(
    session: AsyncSession, rule: AlertRule, event: AlertEvent, notice: Notice, now: datetime
) -> None:
    due = release_time(rule, now)
    for index, channel in enumerate(rule.channels):
        session.add(
            AlertDelivery(
                organization_id=rule.organization_id,
                event_id=event.id,
                notice=notice.value,
                channel_index=index,
                channel=channel["type"],
                target=target_of(channel),
                status=DeliveryStatus.PENDING.value,
                attempts=0,
                next_attempt_at=due,
            )
        )
    await session.flush()


async def evaluate_rule(
    session: AsyncSession,
    rule_id: uuid.UUID,
    now: datetime,
    evaluated_before: datetime | None = None,
) -> Evaluation | None:
    """Evaluate the rule under its row lock; None when it is disabled or gone, or (with
    `evaluated_before`) when another worker holds it or evaluated it since."""
    rule = await AlertRuleRepository(session).claim(rule_id, evaluated_before)
    if rule is None:
        return None
    value = await _value(session, rule, now)
    rule.last_value, rule.last_evaluated_at = value, now
    events = AlertEventRepository(session)
    open_event = await events.open_of(rule.id)
    if value is not None and value > rule.threshold:
        rule.breached_since = rule.breached_since or now
        if open_event is not None:
            return Evaluation(rule.id, value, "firing")
        if now - rule.breached_since < timedelta(seconds=rule.for_seconds):
            return Evaluation(rule.id, value, "pending")
        event = await events.add(
            AlertEvent(
                organization_id=rule.organization_id,
                rule_id=rule.id,
                fired_at=now,
                value=value,
                threshold=rule.threshold,
            )
        )
        await queue_notices(session, rule, event, Notice.FIRING, now)
        log.info("alert_fired", rule_id=str(rule.id), value=str(value))
        return Evaluation(rule.id, value, "fired")
    rule.breached_since = None
    if open_event is None:
        return Evaluation(rule.id, value, "ok")
    open_event.resolved_at, open_event.resolved_value = now, value
    await queue_notices(session, rule, open_event, Notice.RESOLVED, now)
    log.info("alert_resolved", rule_id=str(rule.id))
    return Evaluation(rule.id, value, "resolved")


async def evaluate_all(
    database: Database, now: datetime, every: timedelta | None = None
) -> list[Evaluation]:
    """One pass over the enabled rules, each in its own transaction (a failing rule does
    not stop the others). With `every`, only the rules nobody evaluated in the last
    `every` and that no other worker is evaluating: a fleet of workers shares the rules,
    each evaluated about once per `every` whichever worker gets to it."""
    evaluated_before = None if every is None else now - every
    async with database.unit_of_work(primary=True) as session:
        rule_ids = await AlertRuleRepository(session).due_ids(evaluated_before)
    done: list[Evaluation] = []
    for rule_id in rule_ids:
        try:
            async with database.unit_of_work(primary=True) as session:
                evaluation = await evaluate_rule(session, rule_id, now, evaluated_before)
        except Conflict:  # another worker opened the event first: it notifies
            continue
        except Exception:
            log.exception("alert_evaluation_failed", rule_id=str(rule_id))
            continue
        if evaluation is not None:
            done.append(evaluation)
    return done


# --- managing rules ------------------------------------------------------------------------

MAX_RULES_PER_ORGANIZATION = 100


def new_webhook_secret() -> str:
    return f"whsec_{secrets.token_hex(24)}"


def check_channels(channels: list[dict[str, str]], *, allow_private: bool) -> None:
    """Every webhook URL must be one Apex may call; the field of the first that is not is
    named in the error."""
    errors = []
    for index, channel in enumerate(channels):
        if channel["type"] == ChannelType.EMAIL:
            continue
        try:
            check_url(channel["url"], allow_private=allow_private)
        except DeliveryRefused as exc:
            errors.append({"field": f"channels.{index}.url", "message": str(exc)})
    if errors:
        raise ValidationFailed("A channel cannot be used.", errors=errors)


def _needs_secret(rule: AlertRule) -> bool:
    wants = any(channel["type"] == ChannelType.WEBHOOK for channel in rule.channels)
    return wants and rule.webhook_secret is None


def _quiet(fields: dict[str, Any]) -> dict[str, Any]:
    if "quiet_hours" not in fields:
        return {}
    quiet = fields.pop("quiet_hours")
    return {
        "quiet_start_hour": quiet["start_hour"] if quiet else None,
        "quiet_end_hour": quiet["end_hour"] if quiet else None,
    }


async def create_rule(
    session: AsyncSession,
    organization_id: uuid.UUID,
    fields: dict[str, Any],
    *,
    actor_id: uuid.UUID,
    now: datetime,
    allow_private: bool,
    sealer: Sealer,
) -> tuple[AlertRule, str | None]:
    """The new rule and its webhook secret (None without a webhook channel), which is
    stored sealed and answered only now."""
    check_channels(fields["channels"], allow_private=allow_private)
    rules = AlertRuleRepository(session)
    if len(await rules.of_organization(organization_id)) >= MAX_RULES_PER_ORGANIZATION:
        raise ValidationFailed(
            f"An organisation has at most {MAX_RULES_PER_ORGANIZATION} alert rules.",
            errors=[{"field": "name", "message": "delete a rule first"}],
        )
    quiet = _quiet(fields)  # pops quiet_hours out of fields
    rule = AlertRule(organization_id=organization_id, **quiet, **fields)
    secret = new_webhook_secret() if _needs_secret(rule) else None
    rule.webhook_secret = sealer.seal(secret) if secret is not None else None
    await rules.add(rule)
    await audit.record(
        session, "alert_rule.created", now=now, organization_id=organization_id,
        actor_id=actor_id, target=("alert_rule", rule.id), kind=rule.kind,
    )  # fmt: skip
    return rule, secret


async def update_rule(
    session: AsyncSession,
    organization_id: uuid.UUID,
    rule_id: uuid.UUID,
    fields: dict[str, Any],
    *,
    actor_id: uuid.UUID,
    now: datetime,
    allow_private: bool,
    sealer: Sealer,
) -> tuple[AlertRule, str | None]:
    """The changed rule, and a new webhook secret if a webhook channel was added first now."""
    rule = await AlertRuleRepository(session).owned(organization_id, rule_id, lock=True)
    if fields.get("channels") is not None:
        check_channels(fields["channels"], allow_private=allow_private)
    if rule.kind in PERCENT_KINDS and (fields.get("threshold") or 0) > MAX_PERCENT:
        raise ValidationFailed(
            "An error rate is a percent.",
            errors=[{"field": "threshold", "message": "at most 100"}],
        )
    quiet = _quiet(fields)  # pops quiet_hours out of fields
    for name, value in {**quiet, **fields}.items():
        setattr(rule, name, value)
    if fields.get("enabled") is False:
        rule.breached_since = None
    secret = new_webhook_secret() if _needs_secret(rule) else None
    if secret is not None:
        rule.webhook_secret = sealer.seal(secret)
    await session.flush()
    await audit.record(session, "alert_rule.updated", now=now, organization_id=organization_id,
                       actor_id=actor_id, target=("alert_rule", rule.id),
                       fields=sorted(fields))  # fmt: skip
    return rule, secret


async def delete_rule(
    session: AsyncSession,
    organization_id: uuid.UUID,
    rule_id: uuid.UUID,
    *,
    actor_id: uuid.UUID,
    now: datetime,
) -> None:
    """The rule goes with its events and their delivery log."""
    rules = AlertRuleRepository(session)
    rule = await rules.owned(organization_id, rule_id, lock=True)
    await rules.delete(rule)
    await audit.record(session, "alert_rule.deleted", now=now, organization_id=organization_id,
                       actor_id=actor_id, target=("alert_rule", rule_id))  # fmt: skip


async def state_of(session: AsyncSession, rule: AlertRule) -> str:
    if await AlertEventRepository(session).open_of(rule.id) is not None:
        return "firing"
    return "pending" if rule.breached_since is not None else "ok"
