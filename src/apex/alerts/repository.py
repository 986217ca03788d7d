"""All SQL of alerts."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import ColumnElement, or_, select

from apex.alerts.models import AlertDelivery, AlertEvent, AlertRule, DeliveryStatus
from apex.kit.errors import NotFound
from apex.kit.repository import Repository


class AlertRuleRepository(Repository[AlertRule]):
    model = AlertRule

    async def of_organization(self, organization_id: uuid.UUID) -> Sequence[AlertRule]:
        statement = (
            select(AlertRule)
            .where(AlertRule.organization_id == organization_id)
            .order_by(AlertRule.created_at)
        )
        return (await self.session.scalars(statement)).all()

    async def owned(
        self, organization_id: uuid.UUID, rule_id: uuid.UUID, *, lock: bool = False
    ) -> AlertRule:
        """The organisation's rule; another organisation's is not found, like a missing one."""
        found = await (self.locked(rule_id) if lock else self.get(rule_id))
        if found is None or found.organization_id != organization_id:
            raise NotFound("No such alert rule in your organisation.")
        return found

    async def due_ids(self, evaluated_before: datetime | None) -> Sequence[uuid.UUID]:
        """Enabled rules not evaluated since `evaluated_before` (None: every enabled rule)."""
        statement = select(AlertRule.id).where(AlertRule.enabled, *_due(evaluated_before))
        return (await self.session.scalars(statement.order_by(AlertRule.id))).all()

    async def claim(
        self, rule_id: uuid.UUID, evaluated_before: datetime | None
    ) -> AlertRule | None:
        """The rule, locked, if it is enabled, still due and no other worker holds it: the
        workers of a fleet share the rules rather than each evaluating all of them."""
        statement = (
            self.select()
            .where(AlertRule.id == rule_id, AlertRule.enabled, *_due(evaluated_before))
            .with_for_update(skip_locked=evaluated_before is not None)
            .execution_options(populate_existing=True)
        )
        rule: AlertRule | None = await self.session.scalar(statement)
        return rule


def _due(evaluated_before: datetime | None) -> list[ColumnElement[bool]]:
    if evaluated_before is None:
        return []
    return [
        or_(AlertRule.last_evaluated_at.is_(None), AlertRule.last_evaluated_at < evaluated_before)
    ]


class AlertEventRepository(Repository[AlertEvent]):
    model = AlertEvent

    async def open_of(self, rule_id: uuid.UUID) -> AlertEvent | None:
        statement = select(AlertEvent).where(
            AlertEvent.rule_id == rule_id, AlertEvent.resolved_at.is_(None)
        )
        return (await self.session.scalars(statement)).first()

    async def of_organization(
        self,
        organization_id: uuid.UUID,
        *,
        rule_id: uuid.UUID | None = None,
        open_only: bool = False,
        limit: int = 100,
    ) -> Sequence[AlertEvent]:
        statement = select(AlertEvent).where(AlertEvent.organization_id == organization_id)
        if rule_id is not None:
            statement = statement.where(AlertEvent.rule_id == rule_id)
        if open_only:
            statement = statement.where(AlertEvent.resolved_at.is_(None))
        statement = statement.order_by(AlertEvent.fired_at.desc()).limit(limit)
        return (await self.session.scalars(statement)).all()

    async def owned(self, organization_id: uuid.UUID, event_id: uuid.UUID) -> AlertEvent:
        found = await self.get(event_id)
        if found is None or found.organization_id != organization_id:
            raise NotFound("No such alert event in your organisation.")
        return found


class AlertDeliveryRepository(Repository[AlertDelivery]):
    model = AlertDelivery

    async def of_event(self, event_id: uuid.UUID) -> Sequence[AlertDelivery]:
        statement = (
            select(AlertDelivery)
            .where(AlertDelivery.event_id == event_id)
            .order_by(AlertDelivery.created_at, AlertDelivery.channel_index)
        )
        return (await self.session.scalars(statement)).all()

    async def claim_due(self, now: datetime, limit: int) -> Sequence[AlertDelivery]:
        """Pending deliveries due now, locked; another worker skips them (PostgreSQL)."""
        statement = (
            select(AlertDelivery)
            .where(
                AlertDelivery.status == DeliveryStatus.PENDING.value,
                AlertDelivery.next_attempt_at <= now,
            )
            .order_by(AlertDelivery.next_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        return (await self.session.scalars(statement)).all()
