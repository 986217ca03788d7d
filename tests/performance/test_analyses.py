"""The analyses' data step and the billing meter over 1,000,000 and 10,000,000 records of
one organisation in one month, read from the usage rollups, next to one scan of the raw
records (the baseline) in the same run."""

from __future__ import annotations

import asyncio
import copy
import statistics
import time
import uuid
from datetime import timedelta

import asyncpg
import pytest

from apex.agents.sandbox import AnalysisSandbox
from apex.agents.tools.analyses import RECOMMENDERS, inputs_for, run_analyses
from apex.kit.db import Database
from apex.settings import Settings
from apex.usage.rollups import MeterRepository, RollupRepository, SpendRepository
from apex.usage.spend import Window
from tests.harness import PostgresCluster
from tests.performance.report import write_section
from tests.performance.usage_data import (
    CATALOGUE,
    COLUMNS,
    END,
    copy_rows,
    organization,
    records,
    row,
)

BASE = 1_000_000
SIZES = (1_000_000, 10_000_000)
MONTH = Window(END - timedelta(days=31), END)


def load(postgres: PostgresCluster, template_database: str, n: int) -> tuple[str, uuid.UUID, float]:
    """A database holding `n` records of one organisation: a million from the demo's generator
    by COPY, then copies of them made by PostgreSQL itself (fresh record ids, and fresh prompt
    hashes so each copy brings its own prompts, as new traffic would)."""
    database = postgres.create_database(template=template_database)
    org = organization(postgres, database)
    started = time.perf_counter()
    url = postgres.url(database)
    asyncio.run(copy_rows(url, org, [row(org, r) for r in records(BASE)]))
    if n > BASE:
        asyncio.run(multiply(url, n // BASE))
    postgres.sql("ANALYZE usage_records", database)
    return database, org, time.perf_counter() - started


async def multiply(url: str, times: int) -> None:
    columns = ", ".join(COLUMNS)
    derived = {
        "id": "gen_random_uuid()",
        "record_id": "record_id || '-c' || k",
        "prompt_hash": "prompt_hash || '-c' || k",
    }
    selected = ", ".join(derived.get(c, c) for c in COLUMNS)
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(
            f"INSERT INTO usage_records ({columns}) SELECT {selected} "  # noqa: S608
            f"FROM usage_records CROSS JOIN generate_series(1, {times - 1}) AS k"
        )
    finally:
        await connection.close()


async def measure(url: str, org: uuid.UUID, n: int) -> dict[str, float | int]:
    db = Database(Settings(database_url=url, environment="test", db_command_timeout=3600))
    try:
        started = time.perf_counter()
        async with db.unit_of_work() as session:
            summed = await RollupRepository(session).rebuild(org)
        rebuild = time.perf_counter() - started
        assert summed == n
        connection = await asyncpg.connect(url)
        try:
            await connection.execute("ANALYZE usage_rollups, usage_hash_rollups, usage_hash_totals")
            started = time.perf_counter()
            total = await connection.fetchval(
                "SELECT count(*) FROM usage_records WHERE organization_id = $1", org
            )
            scan = time.perf_counter() - started
            rollup_rows = await connection.fetchval("SELECT count(*) FROM usage_rollups")
            hash_rows = await connection.fetchval("SELECT count(*) FROM usage_hash_rollups")
        finally:
            await connection.close()
        assert total == n
        fetches, meters = [], []
        for _ in range(3):
            started = time.perf_counter()
            async with db.unit_of_work() as session:
                data = await SpendRepository(session).fetch(org, MONTH)
            fetches.append(time.perf_counter() - started)
        for _ in range(20):
            started = time.perf_counter()
            async with db.unit_of_work() as session:
                reading = await MeterRepository(session).read(org, MONTH)
            meters.append(time.perf_counter() - started)
        assert reading.records == n
        started = time.perf_counter()
        breakdown, found = run_analyses(data, CATALOGUE, RECOMMENDERS)
        compute = time.perf_counter() - started
        sandbox = AnalysisSandbox(memory_mb=1024, cpu_seconds=60)
        await sandbox.run("batch_api", copy.copy(data), CATALOGUE)  # start the forkserver
        started = time.perf_counter()
        sandboxed = [  # as a run's data step does: each gets the rows it reads
            r
            for name in RECOMMENDERS
            for r in await sandbox.run(name, inputs_for(name, data), CATALOGUE)
        ]
        sandboxed_seconds = time.perf_counter() - started
    finally:
        await db.dispose()
    assert breakdown.calls == n
    assert {r.kind for r in found} >= {"prompt_caching", "model_right_sizing", "batch_api"}
    assert sorted(sandboxed, key=repr) == sorted(found, key=repr)
    return {
        "scan": scan,
        "rebuild": rebuild,
        "fetch": statistics.median(fetches),
        "meter_ms": statistics.median(meters) * 1000,
        "compute": compute,
        "sandboxed": sandboxed_seconds,
        "rollup_rows": rollup_rows,
        "hash_rows": hash_rows,
        "duplicates": len(data.duplicates),
        "found": len(found),
    }


@pytest.mark.timeout(1800)  # loading ten million records and building their rollups
def test_analyses_and_meter_at_one_and_ten_million_records(
    postgres: PostgresCluster, template_database: str
) -> None:
    lines = [
        "| records | load (COPY + copies) s | one raw scan (baseline) s | rebuild rollups s "
        "| data step: `SpendRepository.fetch` s | vs raw scan | analyses in Python s "
        "| recommenders sandboxed (each with the rows it reads) s "
        "| meter read ms (p50 of 20) | rollup rows | hash rollup rows |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in SIZES:
        database, org, load_seconds = load(postgres, template_database, n)
        m = asyncio.run(measure(postgres.url(database), org, n))
        postgres.drop_database(database)
        assert m["found"] >= 3  # the three kinds measure() checks, at least
        lines.append(
            f"| {n:,} | {load_seconds:.1f} | {m['scan']:.2f} | {m['rebuild']:.1f} "
            f"| {m['fetch']:.3f} | {m['fetch'] / m['scan']:.3f}x | {m['compute']:.3f} "
            f"| {m['sandboxed']:.3f} | {m['meter_ms']:.1f} | {m['rollup_rows']:,} "
            f"| {m['hash_rows']:,} |"
        )
        print(f"\n{n:,} records: {m}")
    write_section(
        "analyses",
        "Analyses and the meter over 1,000,000 and 10,000,000 records",
        "One organisation, one 31-day window: the demo's six workloads, a million records by\n"
        "COPY (51 seeded months stacked), then copies made in PostgreSQL for ten million (new\n"
        "record ids and prompt hashes). The rollups are built once by\n"
        "`RollupRepository.rebuild` (what `apex usage rebuild-rollups` runs; ingestion keeps\n"
        "them current in the same transaction), then the analyses read only the rollups.\n\n"
        + "\n".join(lines)
        + "\n\nThe data step grows with the rollup rows (hours x workloads x models, and the\n"
        "prompts seen at least twice), not with the records: the raw scan is the baseline a\n"
        "query over the records cannot beat. The meter sums at most 744 hourly rows per group.",
    )
