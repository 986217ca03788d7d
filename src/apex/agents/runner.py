"""Runs a run one step at a time. `advance(runtime, run_id)` executes the next step that has
not succeeded, stores its output, and says whether another step follows.

Each step is its own queued job, so a job is short and a worker that dies loses at most the
step it was running: the job is redelivered and the step runs again from the stored outputs
of the steps before it. Terminal states release the organisation's run slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import structlog
from redis.asyncio import Redis

import apex.models  # noqa: F401  (every table, so foreign keys between domains resolve)
from apex.agents.budget import Budget
from apex.agents.events import RunEvents
from apex.agents.limits import RunSlots
from apex.agents.llm.base import BudgetExceeded
from apex.agents.llm.resilience import LLMChain
from apex.agents.models import STEPS, TERMINAL, AgentStep, RunStatus, StepStatus
from apex.agents.pipeline import STEP_FUNCTIONS, RunCancelled, StepContext
from apex.agents.repository import RunRepository, StepRepository
from apex.agents.sandbox import AnalysisSandbox
from apex.billing.plans import plan_for
from apex.chat import service as chat
from apex.chat.models import MessageRole
from apex.findings.service import record_findings
from apex.identity.repository import OrganizationRepository
from apex.kit.clock import Clock
from apex.kit.db import Database
from apex.kit.failpoints import Failpoints
from apex.observability import tracing
from apex.settings import Settings
from apex.usage.models import NANOS_PER_USD
from apex.usage.spend import Window

log = structlog.get_logger(__name__)
WORKER_NAME = f"{socket.gethostname()}:{os.getpid()}"
CANCEL_POLL_SECONDS = 0.5


@dataclass
class Runtime:
    """What a worker (or the embedded process) needs to run steps."""

    settings: Settings
    database: Database
    redis: Redis
    llm: LLMChain
    sandbox: AnalysisSandbox
    clock: Clock
    failpoints: Failpoints

    @property
    def slots(self) -> RunSlots:
        return RunSlots(self.redis)


@dataclass
class _Claim:
    run: dict[str, Any]
    step: str
    position: int
    outputs: dict[str, dict[str, Any]]
    deadline: float


async def _claim_next_step(runtime: Runtime, run_id: uuid.UUID) -> _Claim | None:
    """Mark the next step running (in its own transaction) and gather what it needs."""
    now = runtime.clock.now()
    async with runtime.database.unit_of_work(primary=True) as session:
        run = await RunRepository(session).locked(run_id)
        if run is None or run.status in TERMINAL:
            return None
        steps = {s.name: s for s in await StepRepository(session).for_run(run_id)}
        pending = [
            name for name in STEPS if getattr(steps.get(name), "status", None) != "succeeded"
        ]
        if not pending:
            return None
        name = pending[0]
        if run.status == RunStatus.QUEUED:
            run.status = RunStatus.RUNNING.value
            run.started_at = now
        step = steps.get(name)
        if step is None:
            step = AgentStep(run_id=run_id, name=name, position=STEPS.index(name) + 1)
            session.add(step)
        step.status = StepStatus.RUNNING.value
        step.attempts = (step.attempts or 0) + 1
        step.started_at = now
        step.worker = WORKER_NAME
        step.input = {  # what the step works from: the question and the earlier outputs
            "question": run.question,
            "period": [run.period_start.isoformat(), run.period_end.isoformat()],
            "outputs_of": list(STEPS[: STEPS.index(name)]),
        }
        organization = await OrganizationRepository(session).get_or_raise(run.organization_id)
        started = run.started_at or now
        deadline = started + timedelta(seconds=runtime.settings.agent_run_timeout_seconds)
        claim = _Claim(
            run={
                "id": run.id,
                "organization_id": run.organization_id,
                "thread_id": run.thread_id,
                "question": run.question,
                "window": Window(run.period_start, run.period_end),
                "tier": organization.tier,
                "token_budget": run.token_budget,
                "cost_budget_nanos": run.cost_budget_nanos,
                "tokens_used": run.tokens_used,
                "cost_used_nanos": run.cost_used_nanos,
            },
            step=name,
            position=STEPS.index(name) + 1,
            outputs={s.name: s.output or {} for s in steps.values() if s.status == "succeeded"},
            deadline=(deadline - now).total_seconds(),
        )
    return claim


async def _is_cancelled(runtime: Runtime, run_id: uuid.UUID) -> bool:
    async with runtime.database.unit_of_work(primary=True) as session:
        run = await RunRepository(session).get(run_id)
        return run is None or run.status == RunStatus.CANCELLED


async def advance(runtime: Runtime, run_id: uuid.UUID) -> bool:
    """Run the next step of `run_id`; True if another step should be queued."""
    claim = await _claim_next_step(runtime, run_id)
    if claim is None:
        return False
    info = claim.run
    structlog.contextvars.bind_contextvars(
        organization_id=str(info["organization_id"]), run_id=str(run_id)
    )
    events = RunEvents(runtime.redis, run_id, info["thread_id"], runtime.clock)
    budget = Budget(
        tokens=info["token_budget"],
        cost_nanos=info["cost_budget_nanos"],
        used_tokens=info["tokens_used"],
        used_nanos=info["cost_used_nanos"],
    )
    context = StepContext(
        run_id=run_id,
        organization_id=info["organization_id"],
        question=info["question"],
        window=info["window"],
        plan=plan_for(info["tier"]),
        outputs=claim.outputs,
        events=events,
        llm=runtime.llm,
        budget=budget,
        database=runtime.database,
        sandbox=runtime.sandbox,
        failpoints=runtime.failpoints,
        is_cancelled=lambda: _is_cancelled(runtime, run_id),
    )
    await events.emit("agent_started", {"agent": claim.step, "position": claim.position})
    started = time.monotonic()
    timeout = min(runtime.settings.agent_step_timeout_seconds, claim.deadline)
    try:
        if timeout <= 0:
            raise TimeoutError
        async with asyncio.timeout(timeout):
            with tracing.span(f"agent.step {claim.step}", attributes={"apex.run_id": str(run_id),
                              "apex.step.position": claim.position}):  # fmt: skip
                output = await _until_cancelled(
                    runtime, run_id, STEP_FUNCTIONS[claim.step](context)
                )
    except RunCancelled:
        log.info("agent_step_cancelled", run_id=str(run_id), step=claim.step)
        await _finish_step(runtime, context, claim, started, error="cancelled")
        return False
    except BudgetExceeded as exc:
        return await _fail(runtime, context, claim, started, f"budget exceeded: {exc}")
    except TimeoutError:
        which = "run" if timeout == claim.deadline else "step"
        limit = timeout if which == "step" else runtime.settings.agent_run_timeout_seconds
        return await _fail(runtime, context, claim, started, f"{which} timed out after {limit:g} s")
    except Exception as exc:
        log.exception("agent_step_failed", run_id=str(run_id), step=claim.step)
        return await _fail(runtime, context, claim, started, f"{type(exc).__name__}: {exc}")
    last = claim.step == STEPS[-1]
    finished = await _finish_step(runtime, context, claim, started, output=output, last=last)
    if not finished:
        return False  # cancelled meanwhile: the output is kept, the run is not resumed
    await events.emit(
        "agent_completed",
        {"agent": claim.step, "duration_ms": int((time.monotonic() - started) * 1000)},
    )
    if last:
        await events.emit("final_report", output["report"])
        await runtime.slots.release(info["organization_id"], run_id)
    return not last


async def _until_cancelled(
    runtime: Runtime, run_id: uuid.UUID, work: Awaitable[dict[str, Any]]
) -> dict[str, Any]:
    """Run the step, stopping it (its LLM request and analysis included) as soon as the run
    is cancelled; the run's status is polled every `CANCEL_POLL_SECONDS`."""
    step = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({step}, timeout=CANCEL_POLL_SECONDS)
            if done:
                return step.result()
            if await _is_cancelled(runtime, run_id):
                raise RunCancelled("the run was cancelled")
    finally:
        if not step.done():
            step.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await step


async def _finish_step(
    runtime: Runtime,
    context: StepContext,
    claim: _Claim,
    started: float,
    *,
    output: dict[str, Any] | None = None,
    error: str | None = None,
    last: bool = False,
) -> bool:
    """Store the step's outcome and the run's usage in one transaction. False when the run
    was cancelled (or finished) meanwhile."""
    now = runtime.clock.now()
    async with runtime.database.unit_of_work(primary=True) as session:
        run = await RunRepository(session).locked(context.run_id)
        if run is None:
            return False
        step = next(
            s for s in await StepRepository(session).for_run(run.id) if s.name == claim.step
        )
        step.finished_at = now
        step.duration_ms = int((time.monotonic() - started) * 1000)
        step.llm_calls += context.llm_calls
        step.tokens_used += context.tokens
        step.cost_nanos += int(context.cost_usd * NANOS_PER_USD)
        run.llm_calls += context.llm_calls
        run.tokens_used = context.budget.used_tokens
        run.cost_used_nanos = context.budget.used_nanos
        if error is not None or run.status in TERMINAL:
            step.status = StepStatus.FAILED.value
            step.error = error or f"the run was {run.status} meanwhile"
            return False
        step.status = StepStatus.SUCCEEDED.value
        step.output = output
        if last and output is not None:
            run.status = RunStatus.SUCCEEDED.value
            run.finished_at = now
            run.report = output["report"]
            run.report_markdown = output["markdown"]
            await chat.post_message(
                session, organization_id=run.organization_id, thread_id=run.thread_id,
                author_id=None, role=MessageRole.ASSISTANT, content=output["markdown"], now=now,
            )  # fmt: skip
            await record_findings(session, run)
    return True


async def _fail(
    runtime: Runtime, context: StepContext, claim: _Claim, started: float, error: str
) -> bool:
    await _finish_step(runtime, context, claim, started, error=error)
    async with runtime.database.unit_of_work(primary=True) as session:
        run = await RunRepository(session).locked(context.run_id)
        if run is not None and run.status not in TERMINAL:
            run.status = RunStatus.FAILED.value
            run.error = f"{claim.step}: {error}"
            run.finished_at = runtime.clock.now()
    await context.events.emit("agent_error", {"agent": claim.step, "error": error, "fatal": True})
    await runtime.slots.release(claim.run["organization_id"], context.run_id)
    return False


async def abandon(runtime: Runtime, run_id: uuid.UUID, reason: str) -> None:
    """Fail a run that cannot make progress (its jobs keep failing), if it is not finished."""
    async with runtime.database.unit_of_work(primary=True) as session:
        run = await RunRepository(session).locked(run_id)
        if run is None or run.status in TERMINAL:
            return
        run.status = RunStatus.FAILED.value
        run.error = reason
        run.finished_at = runtime.clock.now()
        organization_id, thread_id = run.organization_id, run.thread_id
    await RunEvents(runtime.redis, run_id, thread_id, runtime.clock).emit(
        "agent_error", {"error": reason, "fatal": True}
    )
    await runtime.slots.release(organization_id, run_id)


def build_runtime(
    settings: Settings, database: Database, redis: Redis, clock: Clock, failpoints: Failpoints
) -> Runtime:
    from apex.agents.llm import build_chain

    return Runtime(
        settings=settings,
        database=database,
        redis=redis,
        llm=build_chain(settings, clock),
        sandbox=AnalysisSandbox(
            memory_mb=settings.analysis_memory_limit_mb,
            cpu_seconds=settings.analysis_cpu_limit_seconds,
        ),
        clock=clock,
        failpoints=failpoints,
    )
