"""Agent runs under /api/v1/agents/runs: start, status, events, report, cancel."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request

from apex.agents import service
from apex.agents.events import read_events
from apex.agents.limits import RunSlots
from apex.agents.models import AgentRun, RunStatus
from apex.agents.repository import RunRepository, StepRepository
from apex.agents.schemas import EventOut, ReportOut, RunIn, RunOut, StepOut
from apex.identity.deps import Principal, RequirePermission
from apex.kit.deps import SessionDep
from apex.kit.errors import Conflict
from apex.usage.models import nanos_to_usd

router = APIRouter(prefix="/api/v1/agents", tags=["agents"])
RUNS = "/runs"


def _run_out(run: AgentRun, steps: list[StepOut] | None = None) -> RunOut:
    return RunOut(
        id=run.id,
        thread_id=run.thread_id,
        question=run.question,
        status=run.status,
        period_start=run.period_start,
        period_end=run.period_end,
        created_at=run.created_at,
        started_at=run.started_at,
        finished_at=run.finished_at,
        error=run.error,
        token_budget=run.token_budget,
        tokens_used=run.tokens_used,
        llm_calls=run.llm_calls,
        cost_used_usd=nanos_to_usd(run.cost_used_nanos),
        steps=steps or [],
    )


@router.post(RUNS, status_code=202, response_model=RunOut)
async def start_run(
    body: RunIn,
    request: Request,
    principal: Annotated[Principal, RequirePermission("agents:run")],
    session: SessionDep,
) -> RunOut:
    """Queue a run of the pipeline on the question; follow it through its events."""
    state = request.app.state
    run = await service.start_run(
        session,
        organization_id=principal.organization_id,
        user_id=principal.user_id,
        body=body,
        settings=state.settings,
        slots=RunSlots(state.redis),
        now=state.clock.now(),
    )
    return _run_out(run)


@router.get(RUNS, response_model=list[RunOut])
async def list_runs(
    principal: Annotated[Principal, RequirePermission("reports:read")], session: SessionDep
) -> list[RunOut]:
    runs = await RunRepository(session).recent(principal.organization_id)
    return [_run_out(run) for run in runs]


@router.get(RUNS + "/{run_id}", response_model=RunOut)
async def get_run(
    run_id: uuid.UUID,
    principal: Annotated[Principal, RequirePermission("reports:read")],
    session: SessionDep,
) -> RunOut:
    run = await service.get_run(session, principal.organization_id, run_id)
    steps = await StepRepository(session).for_run(run.id)
    return _run_out(run, [StepOut.model_validate(step, from_attributes=True) for step in steps])


@router.get(RUNS + "/{run_id}/report", response_model=ReportOut)
async def get_report(
    run_id: uuid.UUID,
    principal: Annotated[Principal, RequirePermission("reports:read")],
    session: SessionDep,
) -> ReportOut:
    run = await service.get_run(session, principal.organization_id, run_id)
    if run.status != RunStatus.SUCCEEDED or run.report is None:
        raise Conflict(f"Run {run_id} has no report: it is {run.status}.", status=run.status)
    return ReportOut(run_id=run.id, markdown=run.report_markdown or "", report=run.report)


@router.get(RUNS + "/{run_id}/events", response_model=list[EventOut])
async def list_events(
    run_id: uuid.UUID,
    request: Request,
    principal: Annotated[Principal, RequirePermission("reports:read")],
    session: SessionDep,
    after: Annotated[
        str, Query(pattern=r"^(-|\d+-\d+)$", description="Only events after this id.")
    ] = "-",
    limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
) -> list[EventOut]:
    run = await service.get_run(session, principal.organization_id, run_id)
    events = await read_events(request.app.state.redis, run.id, after=after, limit=limit)
    return [EventOut(**event) for event in events]


@router.post(RUNS + "/{run_id}/cancel", response_model=RunOut)
async def cancel_run(
    run_id: uuid.UUID,
    request: Request,
    principal: Annotated[Principal, RequirePermission("agents:run")],
    session: SessionDep,
) -> RunOut:
    """Stop the run: no further step starts, and the running one stops at its next check."""
    state = request.app.state
    run = await service.cancel_run(
        session,
        organization_id=principal.organization_id,
        run_id=run_id,
        slots=RunSlots(state.redis),
        redis=state.redis,
        now=state.clock.now(),
    )
    return _run_out(run)
