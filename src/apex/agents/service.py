"""Starting, reading and cancelling agent runs, within the caller's organisation."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from apex.agents.events import RunEvents
from apex.agents.limits import SLOTS_TO_RELEASE_ON_ROLLBACK, RunSlots
from apex.agents.models import TERMINAL, AgentRun, RunStatus
from apex.agents.repository import RunRepository
from apex.agents.schemas import RunIn
from apex.agents.tasks import queue_first_step
from apex.billing.plans import plan_for
from apex.identity.repository import OrganizationRepository
from apex.kit.db import call_after_commit
from apex.kit.errors import Conflict, NotFound, RateLimited, ValidationFailed
from apex.realtime.models import MessageRole
from apex.realtime.repository import ThreadRepository
from apex.realtime.service import start_thread
from apex.settings import Settings
from apex.usage.models import NANOS_PER_USD


async def start_run(
    session: AsyncSession,
    *,
    organization_id: uuid.UUID,
    user_id: uuid.UUID | None,
    body: RunIn,
    settings: Settings,
    slots: RunSlots,
    now: datetime,
) -> AgentRun:
    """Create a queued run; its first step is queued once the transaction commits.

    The organisation's plan caps concurrent runs: a run over the cap is refused (429 with
    Retry-After and the tier that allows more), never silently parked.
    """
    organization = await OrganizationRepository(session).get_or_raise(organization_id)
    if body.thread_id is not None:
        thread = await ThreadRepository(session).get(body.thread_id)
        if thread is None or thread.organization_id != organization_id:
            raise NotFound("No such thread in your organisation.")
        thread_id = thread.id
    else:
        thread, _ = await start_thread(
            session,
            organization_id=organization_id,
            created_by_id=user_id,
            title=body.question[:200],
            first_message=body.question,
            role=MessageRole.USER,
        )
        thread_id = thread.id
    end = body.period_end or now
    start = body.period_start or end - timedelta(days=30)
    if start >= end:
        raise ValidationFailed(
            "period_start must be before period_end (default: now).",
            errors=[{"field": "period_start", "message": "must be before period_end"}],
        )
    run = AgentRun(
        organization_id=organization_id,
        thread_id=thread_id,
        created_by_id=user_id,
        question=body.question,
        status=RunStatus.QUEUED.value,
        period_start=start,
        period_end=end,
        token_budget=body.token_budget or settings.agent_token_budget,
        cost_budget_nanos=int(
            (
                body.cost_budget_usd
                if body.cost_budget_usd is not None
                else settings.agent_cost_budget_usd
            )
            * NANOS_PER_USD
        ),
        tokens_used=0,
        cost_used_nanos=0,
        llm_calls=0,
    )
    session.add(run)
    await session.flush()
    plan = plan_for(organization.tier)
    lapse = now.timestamp() + settings.agent_run_timeout_seconds + 60
    if not await slots.acquire(
        organization_id, run.id, limit=plan.concurrent_agent_runs, now=now.timestamp(), until=lapse
    ):
        upgrade = plan.next_tier
        raise RateLimited(
            f"Your {plan.tier.value} plan runs at most {plan.concurrent_agent_runs} agent runs "
            "at a time; wait for one to finish."
            + (f" The {upgrade.value} plan allows more." if upgrade else ""),
            retry_after=5,
            limit=plan.concurrent_agent_runs,
            upgrade=upgrade.value if upgrade else None,
        )
    # Released if the transaction does not commit, so a failed start holds no slot.
    session.info.setdefault(SLOTS_TO_RELEASE_ON_ROLLBACK, []).append((organization_id, run.id))
    queue_first_step(session.info, run.id)
    return run


async def get_run(session: AsyncSession, organization_id: uuid.UUID, run_id: uuid.UUID) -> AgentRun:
    run = await RunRepository(session).for_organization(organization_id, run_id)
    if run is None:
        raise NotFound("No such run in your organisation.")
    return run


async def cancel_run(
    session: AsyncSession,
    *,
    organization_id: uuid.UUID,
    run_id: uuid.UUID,
    slots: RunSlots,
    events: RunEvents,
    now: datetime,
) -> AgentRun:
    run = await get_run(session, organization_id, run_id)
    locked = await RunRepository(session).locked(run.id)
    assert locked is not None
    if locked.status in TERMINAL:
        raise Conflict(f"Run {run_id} has already {locked.status}.", status=locked.status)
    locked.status = RunStatus.CANCELLED.value
    locked.finished_at = now
    locked.error = "cancelled by the user"
    await session.flush()

    async def announce() -> None:
        await slots.release(organization_id, run_id)
        await events.emit("agent_error", {"error": "cancelled by the user", "fatal": True})

    # Only once the cancellation is stored: a failed commit must leave the run's slot held.
    call_after_commit(session, announce)
    return locked
