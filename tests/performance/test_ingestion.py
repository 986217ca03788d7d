"""Usage ingestion through the REST API and `apex ingest`, each against a raw COPY of the same
rows into the same PostgreSQL; and the analyses over 1,000,000 records."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from apex.agents.sandbox import AnalysisSandbox
from apex.agents.tools.analyses import RECOMMENDERS, run_analyses
from apex.demo import generate_month
from apex.kit.db import Database
from apex.settings import Settings
from apex.usage.models import usd_to_nanos
from apex.usage.pricing import Tokens, cost_of, default_catalogue
from apex.usage.repository import SpendRepository
from apex.usage.spend import Window
from tests.harness import ApexServer, PostgresCluster, RedisServer
from tests.integration.conftest import redis_server, start_apex
from tests.integration.critical.conftest import bearer, signup
from tests.performance.report import write_section

__all__ = ["redis_server", "start_apex"]
END = datetime(2026, 11, 1, tzinfo=UTC)
CATALOGUE = default_catalogue()
SCAN_BASELINE = "`SELECT count(*)` over the organisation's records (baseline: one scan)"
COLUMNS = [
    "id", "organization_id", "record_id", "occurred_at", "provider", "model", "workload",
    "input_tokens", "cached_input_tokens", "cache_write_tokens", "output_tokens",
    "reasoning_tokens", "latency_ms", "status", "cost_nanos", "cost_source", "prompt_hash",
    "prefix_hash", "prefix_tokens", "end_user", "metadata", "ingested_at",
]  # fmt: skip


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
        END,
    )  # fmt: skip


async def copy_rows(url: str, organization_id: uuid.UUID, rows: list[tuple[Any, ...]]) -> float:
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


def rate_table(rows: list[tuple[str, int, float]], baseline: float) -> str:
    lines = [
        "| path | records | seconds | records/s | rate vs raw COPY |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, n, seconds in rows:
        lines.append(
            f"| {name} | {n:,} | {seconds:.2f} | {n / seconds:,.0f} | {baseline / seconds:.2f}x |"
        )
    return "\n".join(lines)


def rest_ingest(
    postgres: PostgresCluster,
    template_database: str,
    redis_server: RedisServer,
    start_apex: Callable[..., ApexServer],
    batch: list[dict[str, Any]],
    size: int,
) -> float:
    """Seconds to send `batch` in requests of `size` records into a fresh database."""
    database = postgres.create_database(template=template_database)
    server = start_apex(postgres.url(database), redis_server.url)
    with httpx.Client(base_url=server.base_url, timeout=120) as client:
        headers = bearer(signup(client))
        started = time.perf_counter()
        for start in range(0, len(batch), size):
            answer = client.post(
                "/api/v1/usage/events",
                headers=headers,
                json={"records": batch[start : start + size]},
            )
            assert answer.json()["accepted"] == len(batch[start : start + size])
        seconds = time.perf_counter() - started
    assert count(postgres, database) == len(batch)
    server.stop()
    return seconds


def test_ingestion_throughput(
    postgres: PostgresCluster,
    template_database: str,
    redis_server: RedisServer,
    start_apex: Callable[..., ApexServer],
    tmp_path: Path,
) -> None:
    n = 40_000
    batch = list(records(n))

    # Baseline: raw COPY of the same rows into a fresh copy of the schema.
    raw_db = postgres.create_database(template=template_database)
    raw_org = organization(postgres, raw_db)
    copy_seconds = asyncio.run(
        copy_rows(postgres.url(raw_db), raw_org, [row(raw_org, r) for r in batch])
    )
    assert count(postgres, raw_db) == n

    # The REST API: batches of 1,000 and of 10,000, one client, sequentially.
    rest_seconds = {size: rest_ingest(postgres, template_database, redis_server, start_apex,
                                      batch, size) for size in (1_000, 10_000)}  # fmt: skip

    # `apex ingest` on a JSONL file of the same records (its time includes interpreter start).
    cli_db = postgres.create_database(template=template_database)
    organization(postgres, cli_db)
    slug = postgres.sql("SELECT slug FROM organizations", cli_db).strip()
    path = tmp_path / "usage.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in batch))
    env = {k: v for k, v in os.environ.items() if not k.startswith("APEX_")}
    env["APEX_DATABASE_URL"] = postgres.url(cli_db)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "apex", "ingest", str(path), "--org", slug],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    cli_seconds = time.perf_counter() - started
    assert done.returncode == 0, done.stderr
    assert count(postgres, cli_db) == n

    write_section(
        "ingestion",
        "Usage ingestion: REST and `apex ingest` vs raw COPY",
        f"{n:,} records from the demo's generator into the same throwaway PostgreSQL, each\n"
        "path into its own fresh database.\n\n"
        + rate_table(
            [
                ("raw `COPY` via asyncpg (baseline)", n, copy_seconds),
                (
                    "`POST /api/v1/usage/events`, batches of 1,000, one client",
                    n,
                    rest_seconds[1000],
                ),
                (
                    "`POST /api/v1/usage/events`, batches of 10,000, one client",
                    n,
                    rest_seconds[10_000],
                ),
                ("`apex ingest FILE.jsonl` (includes interpreter start)", n, cli_seconds),
            ],
            copy_seconds,
        )
        + "\n\nThe API and the CLI validate every record (pydantic), cost it from the catalogue,\n"
        "COPY the batch into a transaction-local staging table and move it with one\n"
        "`INSERT … SELECT … ON CONFLICT DO NOTHING RETURNING` to report duplicates; the raw\n"
        "COPY does none of that. The REST figures also include JSON over HTTP, a verdict per\n"
        "record in the answer and the commit per batch.",
    )
    rates = (n / copy_seconds, n / rest_seconds[1000], n / rest_seconds[10_000], n / cli_seconds)
    print(
        "\ningest per second: COPY {:,.0f}, REST 1K {:,.0f}, 10K {:,.0f}, CLI {:,.0f}".format(
            *rates
        )
    )


async def test_analyses_over_a_million_records(
    postgres: PostgresCluster, template_database: str
) -> None:
    n = 1_000_000
    database = postgres.create_database(template=template_database)
    org = organization(postgres, database)
    await copy_rows(postgres.url(database), org, [row(org, r) for r in records(n)])
    postgres.sql("ANALYZE usage_records", database)
    url = postgres.url(database)
    db = Database(Settings(database_url=url, environment="test"))
    window = Window(datetime(2026, 1, 1, tzinfo=UTC), END)
    try:
        connection = await asyncpg.connect(url)
        started = time.perf_counter()
        total = await connection.fetchval(
            "SELECT count(*) FROM usage_records WHERE organization_id = $1", org
        )
        scan_seconds = time.perf_counter() - started
        await connection.close()
        assert total == n
        started = time.perf_counter()
        async with db.unit_of_work() as session:
            data = await SpendRepository(session).fetch(org, window)
        query_seconds = time.perf_counter() - started
        started = time.perf_counter()
        breakdown, found = run_analyses(data, CATALOGUE, RECOMMENDERS)
        compute_seconds = time.perf_counter() - started
        sandbox = AnalysisSandbox(memory_mb=1024, cpu_seconds=60)
        # Start the forkserver, untimed, on a copy: the timed runs pickle the data once.
        await sandbox.run("batch_api", copy.copy(data), CATALOGUE)
        started = time.perf_counter()
        sandboxed = [r for name in RECOMMENDERS for r in await sandbox.run(name, data, CATALOGUE)]
        sandbox_seconds = time.perf_counter() - started
    finally:
        await db.dispose()
    assert breakdown.calls == n
    assert {r.kind for r in found} >= {"prompt_caching", "model_right_sizing", "batch_api"}
    assert sorted(sandboxed, key=repr) == sorted(found, key=repr)
    write_section(
        "analyses",
        "Analyses over 1,000,000 records",
        f"{n:,} records of one organisation (the demo's six workloads, 51 seeded months\n"
        "stacked in one 30-day window), loaded with COPY, then analysed as a run does.\n\n"
        "| part | seconds |\n|---|---:|\n"
        f"| {SCAN_BASELINE} | {scan_seconds:.2f} |\n"
        "| the analyses' SQL aggregates (`SpendRepository.fetch`: 4 grouped queries) "
        f"| {query_seconds:.2f} |\n"
        f"| the seven analyses on the aggregates, in Python | {compute_seconds:.3f} |\n"
        f"| the {len(RECOMMENDERS)} recommenders, each in a sandbox process of its own "
        f"(as a run's data step) | {sandbox_seconds:.3f} |\n\n"
        f"{len(found)} recommendations. The work is in PostgreSQL's grouping; what comes back\n"
        f"is {len(data.groups)} groups, {len(data.prefixes)} prefixes and "
        f"{len(data.duplicates)} repeated prompts (the stacked months repeat each other's\n"
        "prompts). Each run's data step pays the aggregate time once. The sandbox pickles the\n"
        "aggregates once per data step, and each analysis pays a fork from the forkserver\n"
        "and an unpickled copy of them.",
    )
    parts = (scan_seconds, query_seconds, compute_seconds, sandbox_seconds)
    print(
        "\nanalyses: scan {:.2f}s, aggregates {:.2f}s, compute {:.3f}s, sandboxed {:.3f}s".format(
            *parts
        )
    )
