"""All SQL of findings."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select

from apex.findings.models import Finding, FindingStatus, SavingsMeasurement
from apex.kit.errors import NotFound
from apex.kit.repository import Repository

ADOPTED = (FindingStatus.VERIFYING.value, FindingStatus.VERIFIED.value)


class FindingRepository(Repository[Finding]):
    model = Finding

    async def of_organization(
        self,
        organization_id: uuid.UUID,
        *,
        status: FindingStatus | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> Sequence[Finding]:
        statement = select(Finding).where(Finding.organization_id == organization_id)
        if status is not None:
            statement = statement.where(Finding.status == status.value)
        statement = statement.order_by(Finding.created_at.desc(), Finding.rank)
        return (await self.session.scalars(statement.limit(limit).offset(offset))).all()

    async def owned(
        self, organization_id: uuid.UUID, finding_id: uuid.UUID, *, lock: bool = False
    ) -> Finding:
        """The organisation's finding; another organisation's is not found, like a missing one."""
        found = await (self.locked(finding_id) if lock else self.get(finding_id))
        if found is None or found.organization_id != organization_id:
            raise NotFound("No such finding in your organisation.")
        return found

    async def due_for_verdict(self, now: datetime, limit: int = 500) -> Sequence[uuid.UUID]:
        statement = (
            select(Finding.id)
            .where(Finding.status == FindingStatus.VERIFYING.value, Finding.verify_until <= now)
            .order_by(Finding.verify_until)
            .limit(limit)
        )
        return (await self.session.scalars(statement)).all()

    async def billable(self, organization_id: uuid.UUID, until: datetime) -> Sequence[Finding]:
        """Verified findings with savings not billed before `until`, locked for billing."""
        statement = (
            select(Finding)
            .where(
                Finding.organization_id == organization_id,
                Finding.status == FindingStatus.VERIFIED.value,
                Finding.billed_through < until,
                Finding.billed_through < Finding.bill_until,
            )
            .order_by(Finding.adopted_at, Finding.id)
            .with_for_update()
        )
        return (await self.session.scalars(statement)).all()

    async def adopted_on(self, organization_id: uuid.UUID, workload: str) -> Sequence[Finding]:
        """The workload's adopted findings (being verified or verified), oldest adoption first."""
        statement = (
            select(Finding)
            .where(
                Finding.organization_id == organization_id,
                Finding.workload == workload,
                Finding.status.in_(ADOPTED),
            )
            .order_by(Finding.adopted_at, Finding.id)
        )
        return (await self.session.scalars(statement)).all()


class SavingsMeasurementRepository(Repository[SavingsMeasurement]):
    model = SavingsMeasurement

    async def of_finding(self, finding_id: uuid.UUID) -> Sequence[SavingsMeasurement]:
        statement = (
            select(SavingsMeasurement)
            .where(SavingsMeasurement.finding_id == finding_id)
            .order_by(SavingsMeasurement.window_start)
        )
        return (await self.session.scalars(statement)).all()
