"""A bounded buffer written in batches: what product telemetry and log shipping share.

`add` never blocks and never fails the caller: past `capacity` the item is dropped and
`on_drop` is told (the owner counts it). A flusher writes up to `batch` items per call of
`write` every `interval` seconds; a failed write puts the items back in front, in order, and
is tried again at the next turn, so a store that is away for a while loses nothing the
buffer can hold. `stop` flushes what is left, with a few tries. `write` must be idempotent
per item (a batch whose acknowledgement was lost is written again).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

log = structlog.get_logger(__name__)
FINAL_FLUSH_ATTEMPTS = 5

Writer = Callable[[list[dict[str, Any]]], Awaitable[None]]


class BatchBuffer:
    def __init__(
        self,
        name: str,
        write: Writer,
        *,
        capacity: int,
        batch: int = 1000,
        interval: float = 1.0,
        on_drop: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.name = name
        self.write = write
        self.capacity = capacity
        self.batch = batch
        self.interval = interval
        self.on_drop = on_drop
        self.items: deque[dict[str, Any]] = deque()
        self.dropped = 0
        self.failing_since_warned = False
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    def add(self, item: dict[str, Any]) -> None:
        if len(self.items) >= self.capacity:
            self.dropped += 1
            if self.on_drop is not None:
                self.on_drop(item)
            return
        self.items.append(item)

    async def flush(self) -> int:
        """Write what is buffered, a batch per call; how many items were written."""
        written = 0
        while self.items:
            taken = [self.items.popleft() for _ in range(min(self.batch, len(self.items)))]
            try:
                await self.write(taken)
            except BaseException:
                self.items.extendleft(reversed(taken))  # kept, in order, for the next try
                raise
            written += len(taken)
        return written

    def start(self) -> None:
        self._task = asyncio.create_task(self._flush_forever(), name=f"{self.name}-flush")

    async def stop(self) -> None:
        """Stop the flusher, then write everything still buffered (a few tries)."""
        self._stop.set()
        if self._task is not None:
            await self._task
        for attempt in range(1, FINAL_FLUSH_ATTEMPTS + 1):
            try:
                await self.flush()
                return
            except Exception as exc:
                log.warning("batch_final_flush_failed", buffer=self.name, attempt=attempt,
                            error=str(exc), left=len(self.items))  # fmt: skip
                await asyncio.sleep(0.2 * attempt)
        log.error("batch_items_lost", buffer=self.name, items=len(self.items))

    async def _flush_forever(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.interval)
            try:
                await self.flush()
                self.failing_since_warned = False
            except Exception as exc:
                if not self.failing_since_warned:  # once per outage, not once per turn
                    log.warning("batch_flush_failed", buffer=self.name, error=str(exc),
                                buffered=len(self.items))  # fmt: skip
                    self.failing_since_warned = True
