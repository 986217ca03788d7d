"""Log aggregation: every process ships its log lines to one queryable store.

With `APEX_LOG_STORE_URL` (a PostgreSQL database, usually not Apex's own), each `apex serve`
and `apex worker` adds a `LogShipper` to its logging: every line that goes to stderr is also
put, as the same JSON, in a bounded buffer (`batching.BatchBuffer`) that is written to the
store's `log_records` table every `APEX_LOG_SHIP_SECONDS`. A store that is down or restarting
loses nothing the buffer can hold (`APEX_LOG_BUFFER_LINES`): the lines wait and are written
when it is back, each once (every line has its own id; a batch written again is skipped).
Operators read it at `GET /api/v1/operator/logs` by level, service, trace, request,
organisation and time.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy import JSON, Column, DateTime, Index, MetaData, String, Table, Uuid, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from apex.kit.ids import new_id
from apex.observability.batching import BatchBuffer
from apex.observability.logging import formatter
from apex.settings import Settings

_metadata = MetaData()
log_records = Table(
    "log_records",
    _metadata,
    Column("id", Uuid, primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("level", String(10), nullable=False),
    Column("service", String(50), nullable=False),
    Column("process", String(100), nullable=False),
    Column("logger", String(200)),
    Column("event", String(200)),
    Column("trace_id", String(32)),
    Column("span_id", String(16)),
    Column("request_id", String(128)),
    Column("organization_id", String(36)),
    Column("line", JSON, nullable=False),
    Index("ix_log_records_at", "at"),
    Index("ix_log_records_trace_id", "trace_id"),
    Index("ix_log_records_organization_id_at", "organization_id", "at"),
)
FILTERS = ("level", "service", "trace_id", "request_id", "organization_id", "event", "process")


def _url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+asyncpg://", 1) if "+" not in url else url


class LogStore:
    """The store's table: created if missing, written in batches, read by filters."""

    def __init__(self, url: str) -> None:
        self.engine: AsyncEngine = create_async_engine(
            _url(url), pool_size=2, max_overflow=0, pool_pre_ping=True,
            connect_args={"timeout": 5, "command_timeout": 10,
                          "server_settings": {"application_name": "apex-logs"}},
        )  # fmt: skip
        self._ready = False

    async def add_many(self, lines: Sequence[dict[str, Any]]) -> None:
        async with self.engine.begin() as connection:
            if not self._ready:
                await connection.run_sync(_metadata.create_all)
                self._ready = True
            statement = postgresql.insert(log_records).on_conflict_do_nothing(index_elements=["id"])
            await connection.execute(statement, list(lines))

    async def query(
        self, filters: dict[str, str], since: datetime, until: datetime, limit: int
    ) -> list[dict[str, Any]]:
        """Lines in [since, until), oldest first, matching every filter given."""
        statement = select(log_records).where(log_records.c.at >= since, log_records.c.at < until)
        for name, value in filters.items():
            statement = statement.where(log_records.c[name] == value)
        statement = statement.order_by(log_records.c.at, log_records.c.id).limit(limit)
        async with self.engine.connect() as connection:
            if not self._ready:
                await connection.run_sync(_metadata.create_all)
                await connection.commit()
                self._ready = True
            rows = (await connection.execute(statement)).mappings().all()
        return [dict(row) for row in rows]

    async def dispose(self) -> None:
        await self.engine.dispose()


def _text(line: dict[str, Any], name: str, limit: int) -> str | None:
    value = line.get(name)
    return None if value is None else str(value)[:limit]


def _row(line: dict[str, Any]) -> dict[str, Any]:
    at = line.get("timestamp")
    return {
        "id": new_id(),
        "at": datetime.fromisoformat(at) if isinstance(at, str) else datetime.now(UTC),
        "level": str(line.get("level", "info"))[:10],
        "service": str(line.get("service", "apex"))[:50],
        "process": str(line.get("process", ""))[:100],
        "logger": _text(line, "logger", 200),
        "event": _text(line, "event", 200),
        "trace_id": _text(line, "trace_id", 32),
        "span_id": _text(line, "span_id", 16),
        "request_id": _text(line, "request_id", 128),
        "organization_id": _text(line, "organization_id", 36),
        "line": line,
    }


class LogShipper(logging.Handler):
    """A logging handler that puts each line, as JSON, in the buffer."""

    ships_logs = True  # configure_logging keeps it when it resets the handlers

    def __init__(self, store: LogStore, *, capacity: int, interval: float) -> None:
        super().__init__()
        self.store = store
        self.buffer = BatchBuffer("logs", store.add_many, capacity=capacity, interval=interval,
                                  batch=2000)  # fmt: skip
        self.setFormatter(formatter(structlog.processors.JSONRenderer()))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = json.loads(self.format(record))
        except Exception:  # a line that cannot be rendered is not worth a crash
            return
        self.buffer.add(_row(line))

    @classmethod
    def install(cls, url: str, *, capacity: int, interval: float) -> LogShipper:
        shipper = cls(LogStore(url), capacity=capacity, interval=interval)
        logging.getLogger().addHandler(shipper)
        shipper.buffer.start()
        return shipper

    @classmethod
    def from_settings(cls, settings: Settings) -> LogShipper | None:
        """Installed when `APEX_LOG_STORE_URL` names a store; None otherwise."""
        if settings.log_store_url is None:
            return None
        return cls.install(
            settings.log_store_url.get_secret_value(),
            capacity=settings.log_buffer_lines,
            interval=settings.log_ship_seconds,
        )

    async def uninstall(self) -> None:
        """Stop taking lines, write what is left (the final lines of the process)."""
        logging.getLogger().removeHandler(self)
        await self.buffer.stop()
        await self.store.dispose()


def as_line(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row["line"])
    out["id"] = str(row["id"]) if isinstance(row["id"], uuid.UUID) else row["id"]
    return out
