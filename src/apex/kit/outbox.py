"""Transactional outbox: events written in the same transaction as the data they describe,
published to Redis only after that transaction commits.

`enqueue(session, topic, payload)` adds a row; nothing leaves the process if the
transaction rolls back. After a commit, `OutboxRelay` (woken by the database's after-commit
hook, and on a timer for anything left behind by a crash or a Redis outage) moves pending
rows to the Redis stream `apex:events` and marks them published. Delivery is at least once:
consumers deduplicate by the `outbox_id` field.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import datetime
from typing import Any

import structlog
from redis.asyncio import Redis
from sqlalchemy import JSON, BigInteger, Index, Integer, String, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from apex.kit.db import Database
from apex.kit.models import Base, utc_now

EVENTS_STREAM = "apex:events"
_PENDING_FLAG = "outbox_pending"
log = structlog.get_logger(__name__)


class OutboxMessage(Base):
    __tablename__ = "outbox_messages"
    __table_args__ = (
        Index("ix_outbox_messages_pending", "id", postgresql_where="published_at IS NULL"),
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    topic: Mapped[str] = mapped_column(String(100))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    published_at: Mapped[datetime | None]


async def enqueue(session: AsyncSession, topic: str, payload: dict[str, Any]) -> None:
    """Record an event in the caller's transaction; it is published only if that commits."""
    session.add(OutboxMessage(topic=topic, payload=payload))
    session.info[_PENDING_FLAG] = True


class OutboxRelay:
    """Publishes committed outbox rows to Redis, in order, in batches."""

    def __init__(self, database: Database, redis: Redis, *, interval: float = 1.0) -> None:
        self.database = database
        self.redis = redis
        self.interval = interval
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        database.after_commit(self._after_commit)

    async def _after_commit(self, info: dict[str, Any]) -> None:
        if info.get(_PENDING_FLAG):
            self._wake.set()

    async def drain(self, batch: int = 100) -> int:
        """Publish up to `batch` pending rows; returns how many were published."""
        async with self.database.unit_of_work() as session:
            rows = (
                await session.scalars(
                    select(OutboxMessage)
                    .where(OutboxMessage.published_at.is_(None))
                    .order_by(OutboxMessage.id)
                    .limit(batch)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            if not rows:
                return 0
            async with self.redis.pipeline(transaction=False) as pipe:
                for row in rows:
                    pipe.xadd(
                        EVENTS_STREAM,
                        {
                            "outbox_id": str(row.id),
                            "topic": row.topic,
                            "payload": json.dumps(row.payload),
                        },
                    )
                await pipe.execute()
            await session.execute(
                update(OutboxMessage)
                .where(OutboxMessage.id.in_([row.id for row in rows]))
                .values(published_at=utc_now())
            )
            return len(rows)

    async def _run(self) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()
            try:
                while await self.drain() > 0:
                    pass
            except Exception as exc:  # Redis or the database is down: retry on the next tick
                log.warning("outbox_drain_failed", error=f"{type(exc).__name__}: {exc}"[:200])

    def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    async def stop(self) -> None:
        """Finish the batch in hand (never cancel a transaction half way), then leave."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._task, 10)
