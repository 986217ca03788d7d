"""All SQL of the audit trail."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select

from apex.audit.models import AuditRecord
from apex.kit.repository import Repository


class AuditRepository(Repository[AuditRecord]):
    model = AuditRecord

    async def of_organization(
        self,
        organization_id: uuid.UUID,
        *,
        actor_id: uuid.UUID | None = None,
        action: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
    ) -> Sequence[AuditRecord]:
        """Oldest first. `action` matches a whole action or a prefix ending in '.'."""
        statement = select(AuditRecord).where(AuditRecord.organization_id == organization_id)
        if actor_id is not None:
            statement = statement.where(AuditRecord.actor_id == actor_id)
        if action is not None:
            statement = statement.where(
                AuditRecord.action.startswith(action, autoescape=True)
                if action.endswith(".")
                else AuditRecord.action == action
            )
        if since is not None:
            statement = statement.where(AuditRecord.occurred_at >= since)
        if until is not None:
            statement = statement.where(AuditRecord.occurred_at < until)
        statement = statement.order_by(AuditRecord.occurred_at, AuditRecord.id).limit(limit)
        return (await self.session.scalars(statement)).all()
