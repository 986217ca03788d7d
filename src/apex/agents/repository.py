"""All SQL over agent runs and steps; reads of tenant data take the organisation."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select

from apex.agents.models import AgentRun, AgentStep, RunStatus
from apex.kit.repository import Repository


class RunRepository(Repository[AgentRun]):
    model = AgentRun

    async def for_organization(
        self, organization_id: uuid.UUID, run_id: uuid.UUID
    ) -> AgentRun | None:
        result: AgentRun | None = await self.session.scalar(
            select(AgentRun).where(
                AgentRun.id == run_id, AgentRun.organization_id == organization_id
            )
        )
        return result

    async def started_since(self, organization_id: uuid.UUID, since: datetime) -> int:
        return await self.count(
            AgentRun.organization_id == organization_id, AgentRun.created_at >= since
        )

    async def succeeded_between(
        self, organization_id: uuid.UUID, start: datetime, end: datetime
    ) -> int:
        """Runs that finished with a report in [start, end): the billing meter of runs."""
        return await self.count(
            AgentRun.organization_id == organization_id,
            AgentRun.status == RunStatus.SUCCEEDED.value,
            AgentRun.finished_at >= start,
            AgentRun.finished_at < end,
        )

    async def recent(self, organization_id: uuid.UUID, limit: int = 50) -> Sequence[AgentRun]:
        statement = (
            select(AgentRun)
            .where(AgentRun.organization_id == organization_id)
            .order_by(AgentRun.created_at.desc())
            .limit(limit)
        )
        return (await self.session.scalars(statement)).all()


class StepRepository(Repository[AgentStep]):
    model = AgentStep

    async def for_run(self, run_id: uuid.UUID) -> Sequence[AgentStep]:
        statement = select(AgentStep).where(AgentStep.run_id == run_id).order_by(AgentStep.position)
        return (await self.session.scalars(statement)).all()
