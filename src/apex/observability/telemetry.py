"""The product telemetry pipeline: points recorded in memory, stored in batches.

`PointBuffer.record` never blocks a request and never fails it: it appends to a bounded
buffer (`batching.BatchBuffer`), and when the buffer is full the point is dropped and counted
(`apex_telemetry_points_dropped_total`), never hidden. Points are stored every `interval`
seconds; a failed write is tried again at the next turn. On shutdown (after uvicorn has
served the last request) the buffer is flushed until it is empty, so a SIGTERM loses nothing
that was recorded.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from apex.kit.db import Database
from apex.kit.ids import new_id
from apex.observability.batching import BatchBuffer
from apex.observability.metrics import Metrics, instance_name
from apex.observability.repository import TelemetryRepository


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
        self.instance = instance_name()
        self.buffer = BatchBuffer(
            "telemetry", self._store, capacity=capacity, batch=batch, interval=interval,
            on_drop=lambda point: metrics.points_dropped.add(1, {"metric": point["metric"]}),
        )  # fmt: skip

    def record(self, organization_id: uuid.UUID, metric: str, value: int, at: datetime) -> None:
        # The id is made here: a batch written twice (its acknowledgement lost) stores once.
        self.buffer.add({"id": new_id(), "organization_id": organization_id, "metric": metric,
                         "value": value, "at": at, "instance": self.instance})  # fmt: skip

    async def _store(self, points: list[dict[str, Any]]) -> None:
        async with self.database.unit_of_work(primary=True) as session:
            await TelemetryRepository(session).add_many(points)
        self.metrics.points_written.add(len(points))

    async def flush(self) -> int:
        return await self.buffer.flush()

    def start(self) -> None:
        self.buffer.start()

    async def stop(self) -> None:
        await self.buffer.stop()
