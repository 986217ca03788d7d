"""The job queue (taskiq): Redis Streams in production, in-process on the embedded default.

One task, `apex.agents.run_step`, runs one step of a run and queues the next. A message is
acknowledged after its task finished; one whose worker died is claimed by another worker
after `APEX_QUEUE_REDELIVERY_SECONDS` (longer than any step may take, so a live worker is
never raced).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator
from typing import Any

import structlog
from redis.asyncio import Redis
from taskiq import AckableMessage, AsyncBroker, InMemoryBroker
from taskiq_redis import RedisStreamBroker

from apex.agents.runner import Runtime, abandon, advance
from apex.settings import Settings

STEP_TASK = "apex.agents.run_step"
MAX_JOB_ATTEMPTS = 5
RUNS_TO_QUEUE = "agent_runs_to_queue"
log = structlog.get_logger(__name__)


class ReclaimingStreamBroker(RedisStreamBroker):
    """`RedisStreamBroker` whose `listen` claims other workers' stale messages on every turn.

    taskiq-redis 1.2 only runs XAUTOCLAIM after XREADGROUP returned new messages, so on a
    quiet queue the job of a dead worker would wait for unrelated traffic.
    """

    async def listen(self) -> AsyncGenerator[AckableMessage, None]:
        async with Redis(connection_pool=self.connection_pool) as redis:
            while True:
                fetched: Any = await redis.xreadgroup(
                    self.consumer_group_name,
                    self.consumer_name,
                    {self.queue_name: ">"},
                    block=self.block,
                    noack=False,
                    count=self.count,
                )
                for stream, messages in fetched or []:
                    for message_id, fields in messages:
                        yield AckableMessage(
                            data=fields[b"data"],
                            ack=self._ack_generator(id=message_id, queue_name=stream),
                        )
                claimed: Any = await redis.xautoclaim(
                    name=self.queue_name,
                    groupname=self.consumer_group_name,
                    consumername=self.consumer_name,
                    min_idle_time=self.idle_timeout,
                    count=self.unacknowledged_batch_size,
                )
                for message_id, fields in claimed[1]:
                    if fields is None:  # deleted meanwhile
                        continue
                    log.info("job_reclaimed", message_id=str(message_id))
                    yield AckableMessage(
                        data=fields[b"data"],
                        ack=self._ack_generator(id=message_id, queue_name=self.queue_name),
                    )


def create_broker(settings: Settings) -> AsyncBroker:
    if settings.redis_url is None:
        return InMemoryBroker()
    return ReclaimingStreamBroker(
        settings.redis_url,
        queue_name=settings.queue_name,
        consumer_group_name="apex-workers",
        consumer_id="0",
        idle_timeout=int(settings.queue_redelivery_seconds * 1000),
        xread_block=500,
    )


class JobQueue:
    """The broker with Apex's tasks registered; `runtime` is set in processes that run them."""

    def __init__(self, settings: Settings, runtime: Runtime | None = None) -> None:
        self.broker = create_broker(settings)
        self.runtime = runtime

        async def run_step(run_id: str, attempt: int = 0) -> None:
            if self.runtime is None:
                raise RuntimeError("this process queues jobs but does not run them")
            try:
                more = await advance(self.runtime, uuid.UUID(run_id))
            except Exception:
                # The database or Redis failed around the step (the step's own errors are
                # handled by `advance`): try again later, then give the run up.
                log.exception("agent_step_job_failed", run_id=run_id, attempt=attempt)
                if attempt + 1 >= MAX_JOB_ATTEMPTS:
                    await abandon(self.runtime, uuid.UUID(run_id), "the step could not be run")
                    return
                await asyncio.sleep(min(30.0, 0.5 * 2**attempt))
                await self.enqueue_step(uuid.UUID(run_id), attempt + 1)
                return
            if more:
                await self.enqueue_step(uuid.UUID(run_id))

        self.broker.register_task(run_step, task_name=STEP_TASK)

    async def enqueue_step(self, run_id: uuid.UUID, attempt: int = 0) -> None:
        task = self.broker.find_task(STEP_TASK)
        if task is None:
            raise RuntimeError(f"task {STEP_TASK} is not registered")
        await task.kiq(str(run_id), attempt)

    async def after_commit(self, info: dict[str, Any]) -> None:
        """Database after-commit hook: queue the first step of runs created in the unit."""
        for run_id in info.pop(RUNS_TO_QUEUE, []):
            await self.enqueue_step(run_id)

    async def start(self) -> None:
        await self.broker.startup()

    async def stop(self) -> None:
        if isinstance(self.broker, InMemoryBroker):
            await self.broker.wait_all()
        await self.broker.shutdown()


def queue_after_commit(session_info: dict[str, Any], run_id: uuid.UUID) -> None:
    session_info.setdefault(RUNS_TO_QUEUE, []).append(run_id)


async def serve_jobs(queue: JobQueue, stop: asyncio.Event, *, concurrency: int) -> None:
    """`apex worker`: take jobs until `stop` is set, then finish the ones running."""
    from taskiq.receiver import Receiver

    queue.broker.is_worker_process = True
    receiver = Receiver(queue.broker, max_async_tasks=concurrency, run_startup=True)
    await receiver.listen(stop)
