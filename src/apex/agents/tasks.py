"""The agents' job: `apex.agents.run_step` runs one step of a run and queues the next.

Each queued job is one step, so a job is short and a worker that dies loses at most the step
it was running (another worker runs it again from the stored outputs before it).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import structlog

from apex.agents.runner import Runtime, abandon, advance
from apex.kit.queue import JobQueue

STEP_TASK = "apex.agents.run_step"
MAX_JOB_ATTEMPTS = 5
log = structlog.get_logger(__name__)


def register_agent_tasks(queue: JobQueue, runtime: Runtime | None) -> None:
    """Register the tasks; `runtime` is None in processes that only queue jobs."""

    async def run_step(run_id: str, attempt: int = 0) -> None:
        if runtime is None:
            raise RuntimeError("this process queues jobs but does not run them")
        try:
            more = await advance(runtime, uuid.UUID(run_id))
        except Exception:
            # The database or Redis failed around the step (the step's own errors are
            # handled by `advance`): try again later, then give the run up.
            log.exception("agent_step_job_failed", run_id=run_id, attempt=attempt)
            if attempt + 1 >= MAX_JOB_ATTEMPTS:
                await abandon(runtime, uuid.UUID(run_id), "the step could not be run")
                return
            await asyncio.sleep(min(30.0, 0.5 * 2**attempt))
            await queue.enqueue(STEP_TASK, run_id, attempt + 1)
            return
        if more:
            await queue.enqueue(STEP_TASK, run_id, 0)

    queue.register(STEP_TASK, run_step)


def queue_first_step(session_info: dict[str, Any], run_id: uuid.UUID) -> None:
    """The run's first step is queued once the transaction that created the run commits."""
    JobQueue.enqueue_after_commit(session_info, STEP_TASK, str(run_id), 0)
