"""Starting, reading and cancelling agent runs, within the caller's organisation."""

from __future__ import annotations

import math
import uuid
from datetime import datetime, timedelta

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession

from apex.agents.events import RunEvents
from apex.agents.limits import RunSlots
from apex.agents.models import TERMINAL, AgentRun, RunStatus
from apex.agents.repository import RunRepository
from apex.agents.schemas import RunIn
from apex.agents.tasks import queue_first_step
from apex.billing.plans import Plan, plan_for
from apex.chat.models import MessageRole
from apex.chat.repository import ThreadRepository
from apex.chat.service import start_thread
from apex.identity.repository import OrganizationRepository
from apex.kit.db import call_after_commit, call_after_rollback
from apex.kit.errors import Conflict, NotFound, RateLimited, ValidationFailed
from apex.settings import Settings
from apex.usage.models import NANOS_PER_USD
from apex.usage.spend import Window


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

    The organisation's plan caps runs started per UTC day and concurrent runs: a run over
    either cap is refused (429 with Retry-After and the tier that allows more), never
    silently parked.
    """
    # Locked: concurrent starts of one organisation count its runs of the day one at a time.
    organization = await OrganizationRepository(session).get_or_raise(organization_id, lock=True)
    plan = plan_for(organization.tier)
    await _refuse_over_daily_runs(session, organization_id, plan, now)
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
    if start < end:  # analysed in whole UTC hours, the usage rollups' grain
        hours = Window(start, end).whole_hours()
        start, end = hours.start, hours.end
    if start >= end:
        raise ValidationFailed(
            "period_start must be before period_end (default: now).",
            errors=[{"field": "period_start", "message": "must be before period_end"}],
        )
    run = AgentRun(
        created_at=now,  # the day it counts against is the injectable clock's
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
    lapse = now.timestamp() + settings.agent_run_timeout_seconds + 60
    if not await slots.acquire(
        organization_id, run.id, limit=plan.concurrent_agent_runs, now=now.timestamp(), until=lapse
    ):
        raise _over_plan(
            plan,
            f"runs at most {plan.concurrent_agent_runs} agent runs at a time; "
            "wait for one to finish.",
            limit=plan.concurrent_agent_runs,
            retry_after=5,
        )
    # Released if the transaction does not commit, so a failed start holds no slot.
    run_id = run.id
    call_after_rollback(session, lambda: slots.release(organization_id, run_id))
    queue_first_step(session.info, run.id)
    return run


def _over_plan(plan: Plan, what: str, *, limit: int, retry_after: float) -> RateLimited:
    upgrade = plan.next_tier
    return RateLimited(
        f"Your {plan.tier.value} plan {what}"
        + (f" The {upgrade.value} plan allows more." if upgrade else ""),
        retry_after=retry_after,
        limit=limit,
        upgrade=upgrade.value if upgrade else None,
    )


async def _refuse_over_daily_runs(
    session: AsyncSession, organization_id: uuid.UUID, plan: Plan, now: datetime
) -> None:
    """Runs count against the UTC day they were started on, whatever became of them."""
    if plan.agent_runs_per_day is None:
        return
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    started = await RunRepository(session).started_since(organization_id, today)
    if started >= plan.agent_runs_per_day:
        tomorrow = today + timedelta(days=1)
        raise _over_plan(
            plan,
            f"starts at most {plan.agent_runs_per_day} agent runs a day; "
            "the count starts again at 00:00 UTC.",
            limit=plan.agent_runs_per_day,
            retry_after=math.ceil((tomorrow - now).total_seconds()),
        )


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
    redis: Redis,
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
        events = RunEvents(redis, run_id, locked.thread_id)
        await events.emit("agent_error", {"error": "cancelled by the user", "fatal": True})

    # Only once the cancellation is stored: a failed commit must leave the run's slot held.
    call_after_commit(session, announce)
    return locked
