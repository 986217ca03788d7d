"""The product telemetry pipeline: points recorded in memory, stored in batches.

`PointBuffer.record` never blocks a request and never fails it: it appends to a bounded
buffer, and when the buffer is full the point is dropped and counted
(`apex_telemetry_points_dropped_total`), never hidden. A flusher writes up to `batch` points
per transaction every `interval` seconds; a failed write puts the points back in front and
is tried again at the next turn. On shutdown (after uvicorn has served the last request) the
buffer is flushed until it is empty, so a SIGTERM loses nothing that was recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import deque
from datetime import datetime
from typing import Any

import structlog

from apex.kit.db import Database
from apex.observability.metrics import Metrics, instance_name
from apex.observability.repository import TelemetryRepository

log = structlog.get_logger(__name__)
FINAL_FLUSH_ATTEMPTS = 5


class PointBuffer:
    def __init__(
        self,
        database: Database,
        metrics: Metrics,
        *,
        capacity: int,
        batch: int = 1000,
        interval: float = 1.0,
    ) -> None:
        self.database = database
        self.metrics = metrics
        self.capacity = capacity
        self.batch = batch
        self.interval = interval
        self.instance = instance_name()
        self.points: deque[dict[str, Any]] = deque()
        self.dropped = 0
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    def record(self, organization_id: uuid.UUID, metric: str, value: int, at: datetime) -> None:
        if len(self.points) >= self.capacity:
            self.dropped += 1
            self.metrics.points_dropped.add(1, {"metric": metric})
            return
        self.points.append({"organization_id": organization_id, "metric": metric,
                            "value": value, "at": at, "instance": self.instance})  # fmt: skip

    async def flush(self) -> int:
        """Store what is buffered, a batch per transaction; how many points were stored."""
        stored = 0
        while self.points:
            taken = [self.points.popleft() for _ in range(min(self.batch, len(self.points)))]
            try:
                async with self.database.unit_of_work(primary=True) as session:
                    await TelemetryRepository(session).add_many(taken)
            except BaseException:
                self.points.extendleft(reversed(taken))  # kept, in order, for the next try
                raise
            stored += len(taken)
            self.metrics.points_written.add(len(taken))
        return stored

    def start(self) -> None:
        self._task = asyncio.create_task(self._flush_forever(), name="telemetry-flush")

    async def stop(self) -> None:
        """Stop the flusher, then store everything still buffered (a few tries)."""
        self._stop.set()
        if self._task is not None:
            await self._task
        for attempt in range(1, FINAL_FLUSH_ATTEMPTS + 1):
            try:
                await self.flush()
                return
            except Exception as exc:
                log.warning("telemetry_final_flush_failed", attempt=attempt, error=str(exc),
                            left=len(self.points))  # fmt: skip
                await asyncio.sleep(0.2 * attempt)
        log.error("telemetry_points_lost", points=len(self.points))

    async def _flush_forever(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.interval)
            try:
                await self.flush()
            except Exception as exc:
                log.warning("telemetry_flush_failed", error=str(exc), buffered=len(self.points))
