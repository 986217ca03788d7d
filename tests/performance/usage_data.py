"""Realistic usage records for the benchmarks, and the raw COPY they are measured against."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import asyncpg

from apex.demo import generate_month
from apex.kit.db import Database
from apex.settings import Settings
from apex.usage.models import usd_to_nanos
from apex.usage.pricing import Tokens, cost_of, default_catalogue
from apex.usage.repository import PartitionRepository
from apex.usage.spend import month_start
from tests.harness import PostgresCluster

END = datetime(2026, 11, 1, tzinfo=UTC)
CATALOGUE = default_catalogue()
SCAN_BASELINE = "`SELECT count(*)` over the organisation's records (baseline: one scan)"
COLUMNS = [
    "id", "organization_id", "record_id", "occurred_at", "provider", "model", "workload",
    "input_tokens", "cached_input_tokens", "cache_write_tokens", "output_tokens",
    "reasoning_tokens", "latency_ms", "status", "cost_nanos", "cost_source", "prompt_hash",
    "prefix_hash", "prefix_tokens", "end_user", "metadata", "ingested_at", "retention_days",
]  # fmt: skip
RETENTION_DAYS = 365  # the Mid plan's, the benchmark organisation's


def records(count: int) -> Iterator[dict[str, Any]]:
    """`count` realistic records: months of the demo's generator, re-numbered."""
    produced, seed = 0, 0
    while True:
        seed += 1
        for record in generate_month(seed, END):
            if produced == count:
                return
            record["id"] = f"{seed}-{record['id']}"
            produced += 1
            yield record


def row(organization_id: uuid.UUID, record: dict[str, Any]) -> tuple[Any, ...]:
    """The record as `usage_records` columns, costed from the catalogue as ingestion does."""
    price = CATALOGUE.find(record["provider"], record["model"])
    assert price is not None
    tokens = Tokens(
        input=record["input_tokens"],
        cached_input=record["cached_input_tokens"],
        cache_write=record["cache_write_tokens"],
        output=record["output_tokens"],
    )
    return (
        uuid.uuid4(), organization_id, record["id"], datetime.fromisoformat(record["timestamp"]),
        record["provider"], record["model"], record["workload"], record["input_tokens"],
        record["cached_input_tokens"], record["cache_write_tokens"], record["output_tokens"], 0,
        record["latency_ms"], record["status"], usd_to_nanos(cost_of(price, tokens)), "catalogue",
        record["prompt_hash"],
        record.get("prefix_hash"), record.get("prefix_tokens", 0), record["end_user"], None,
        END, RETENTION_DAYS,
    )  # fmt: skip


async def create_partitions(url: str, rows: list[tuple[Any, ...]]) -> None:
    """The monthly partitions the rows go to (ingestion creates them itself; a raw COPY
    needs them first)."""
    database = Database(Settings(database_url=url, environment="test"))
    try:
        async with database.unit_of_work() as session:
            await PartitionRepository(session).ensure(
                {(month_start(r[COLUMNS.index("occurred_at")]), RETENTION_DAYS) for r in rows}
            )
    finally:
        await database.dispose()


async def copy_rows(url: str, organization_id: uuid.UUID, rows: list[tuple[Any, ...]]) -> float:
    await create_partitions(url, rows)
    connection = await asyncpg.connect(url)
    try:
        started = time.perf_counter()
        await connection.copy_records_to_table("usage_records", records=rows, columns=COLUMNS)
        return time.perf_counter() - started
    finally:
        await connection.close()


def organization(postgres: PostgresCluster, database: str) -> uuid.UUID:
    org = uuid.uuid4()
    postgres.sql(
        f"INSERT INTO organizations (id, name, slug, tier, created_at, updated_at) "  # noqa: S608
        f"VALUES ('{org}', 'Bench', 'bench-{org.hex[:8]}', 'mid', now(), now())",
        database,
    )
    return org


def count(postgres: PostgresCluster, database: str) -> int:
    return int(postgres.sql("SELECT count(*) FROM usage_records", database))
