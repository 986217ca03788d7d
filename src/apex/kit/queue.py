"""The job queue (taskiq): Redis Streams in production, in-process on the embedded default.

Domains register their tasks (`queue.register(name, function)`, see `agents/tasks.py`) and
queue jobs after their transaction commits (`enqueue_after_commit(session.info, ...)` plus
the `after_commit` database hook). A message is acknowledged after its task finished; one
whose worker died is claimed by another worker after `APEX_QUEUE_REDELIVERY_SECONDS`, which
must be longer than any task may run, so a live worker is never raced.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import structlog
from opentelemetry.trace import SpanKind
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from taskiq import AckableMessage, AsyncBroker, InMemoryBroker
from taskiq_redis import RedisStreamBroker

from apex.kit.clock import Clock
from apex.observability import tracing
from apex.settings import Settings

if TYPE_CHECKING:
    from apex.observability.metrics import Metrics

JOBS_AFTER_COMMIT = "jobs_after_commit"
RECONNECT_FIRST_SECONDS = 0.5
RECONNECT_MAX_SECONDS = 5.0
log = structlog.get_logger(__name__)


class ReclaimingStreamBroker(RedisStreamBroker):
    """`RedisStreamBroker` whose `listen` claims other workers' stale messages on every turn.

    taskiq-redis 1.2 only runs XAUTOCLAIM after XREADGROUP returned new messages, so on a
    quiet queue the job of a dead worker would wait for unrelated traffic.
    """

    async def listen(self) -> AsyncGenerator[AckableMessage, None]:
        """Messages for this worker, for ever. Redis going away does not end it: it waits
        (0.5 s, doubling to 5 s) and reads again; a Redis that came back without its data
        gets the consumer group declared again."""
        pause = RECONNECT_FIRST_SECONDS
        async with Redis(connection_pool=self.connection_pool) as redis:
            while True:
                try:
                    batch = await self._fetch(redis)
                except (RedisConnectionError, RedisTimeoutError) as exc:
                    log.warning("queue_unreachable", error=str(exc), retry_in=pause)
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, RECONNECT_MAX_SECONDS)
                    continue
                except ResponseError as exc:
                    if "NOGROUP" not in str(exc):
                        raise
                    log.warning("queue_group_declared_again")
                    await self._declare_consumer_group()
                    continue
                pause = RECONNECT_FIRST_SECONDS
                for message in batch:
                    yield message

    async def _fetch(self, redis: Redis) -> list[AckableMessage]:
        """New messages, then other workers' stale ones."""
        fetched: Any = await redis.xreadgroup(
            self.consumer_group_name,
            self.consumer_name,
            {self.queue_name: ">"},
            block=self.block,
            noack=False,
            count=self.count,
        )
        batch = [
            AckableMessage(
                data=fields[b"data"], ack=self._ack_generator(id=message_id, queue_name=stream)
            )
            for stream, messages in fetched or []
            for message_id, fields in messages
        ]
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
            batch.append(
                AckableMessage(
                    data=fields[b"data"],
                    ack=self._ack_generator(id=message_id, queue_name=self.queue_name),
                )
            )
        return batch


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
    """The broker and the tasks registered on it; with `metrics`, each job run is counted
    by task and outcome and timed (`apex_queue_jobs_total`, `apex_queue_job_duration_*`)."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.broker = create_broker(settings)
        self.metrics = metrics

    def register(self, name: str, task: Callable[..., Awaitable[None]]) -> None:
        self.broker.register_task(self._instrumented(name, task), task_name=name)

    def _instrumented(
        self, name: str, task: Callable[..., Awaitable[None]]
    ) -> Callable[..., Awaitable[None]]:
        """The task run in a span continuing the trace of whoever queued it, counted and
        timed when the process has metrics."""
        metrics = self.metrics

        @functools.wraps(task)
        async def run(*args: Any, **kwargs: Any) -> None:
            parent = kwargs.pop(tracing.TRACEPARENT, None)
            started, outcome = time.perf_counter(), "error"
            try:
                with tracing.span(f"job {name}", kind=SpanKind.CONSUMER,
                                  parent={"traceparent": parent} if parent else None,
                                  attributes={"messaging.operation": "process"}):  # fmt: skip
                    await task(*args, **kwargs)
                outcome = "ok"
            finally:
                if metrics is not None:
                    labels = {"task": name, "outcome": outcome}
                    metrics.jobs.add(1, labels)
                    metrics.job_duration.record(time.perf_counter() - started, labels)

        return run

    async def enqueue(self, name: str, *args: Any) -> None:
        task = self.broker.find_task(name)
        if task is None:
            raise RuntimeError(f"task {name} is not registered")
        traceparent = tracing.carrier().get("traceparent")
        if traceparent is None:
            await task.kiq(*args)
        else:
            await task.kiq(*args, **{tracing.TRACEPARENT: traceparent})

    @staticmethod
    def enqueue_after_commit(session_info: dict[str, Any], name: str, *args: Any) -> None:
        """Queue a job once the unit of work that `session_info` belongs to has committed."""
        session_info.setdefault(JOBS_AFTER_COMMIT, []).append((name, args))

    async def after_commit(self, info: dict[str, Any]) -> None:
        """The database's after-commit hook: send the jobs the unit of work recorded."""
        for name, args in info.pop(JOBS_AFTER_COMMIT, []):
            await self.enqueue(name, *args)

    async def start(self) -> None:
        await self.broker.startup()

    async def stop(self) -> None:
        if isinstance(self.broker, InMemoryBroker):
            await self.broker.wait_all()
        await self.broker.shutdown()


async def serve_jobs(queue: JobQueue, stop: asyncio.Event, *, concurrency: int) -> None:
    """`apex worker`: take jobs until `stop` is set, then finish the ones running."""
    from taskiq.receiver import Receiver

    queue.broker.is_worker_process = True
    receiver = Receiver(queue.broker, max_async_tasks=concurrency, run_startup=True)
    await receiver.listen(stop)


class WorkerRegistry:
    """Which `apex worker` processes are alive: each one stamps its name in a sorted set
    every heartbeat; one silent for three heartbeats is gone. (A stream consumer's idle time
    cannot tell: on Redis 7.0 an empty XREADGROUP does not reset it.)"""

    def __init__(self, redis: Redis, settings: Settings, clock: Clock) -> None:
        self.redis = redis
        self.key = f"{settings.queue_name}:workers"
        self.queue_name = settings.queue_name
        self.backlog = 0  # jobs in the stream at the last heartbeat (a gauge reads it)
        self.heartbeat = settings.worker_heartbeat_seconds
        self.clock = clock
        self.name = f"{socket.gethostname()}:{os.getpid()}"

    async def beat(self) -> None:
        now = self.clock.now().timestamp()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zadd(self.key, {self.name: now})
            pipe.zremrangebyscore(self.key, "-inf", now - 3600)  # long-gone workers
            pipe.xlen(self.queue_name)
            *_, backlog = await pipe.execute()
        self.backlog = int(backlog)

    async def keep_beating(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.beat()
            except Exception as exc:  # Redis away: the queue itself fails too; keep trying
                log.warning("worker_heartbeat_failed", error=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.heartbeat)
        with contextlib.suppress(Exception):  # stopping cleanly: say so at once
            await self.redis.zrem(self.key, self.name)

    async def alive(self) -> int:
        now = self.clock.now().timestamp()
        return int(await self.redis.zcount(self.key, now - 3 * self.heartbeat, "+inf"))
