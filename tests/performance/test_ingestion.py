"""Usage ingestion through the REST API and `apex ingest`, each against a raw COPY of the same
rows into the same PostgreSQL."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import event

from apex.kit.db import Database
from apex.settings import Settings
from apex.usage import service
from tests.harness import ApexServer, PostgresCluster, RedisServer
from tests.integration.conftest import redis_server, start_apex
from tests.integration.critical.conftest import bearer, signup
from tests.performance.report import write_section
from tests.performance.usage_data import copy_rows, count, organization, records, row

__all__ = ["redis_server", "start_apex"]
NOW = datetime(2026, 11, 27, 12, tzinfo=UTC)


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


# What each of a batch's statements does, by how its SQL starts (apex.usage.repository and
# apex.usage.rollups); the binary COPY into the staging table is not a statement and is not
# counted here.
STATEMENTS = {
    "WITH new AS (INSERT INTO usage_record_ids": "move the new records out of staging",
    "INSERT INTO usage_rollups": "add to the hourly rollups",
    "INSERT INTO usage_hash_rollups": "add to the hourly prompt and prefix hash rollups",
    "INSERT INTO usage_hash_totals": "add to the all-time prompt and prefix hash totals",
}


def statement_seconds(
    database_url: str, organization_id: uuid.UUID, batch: list[dict[str, Any]]
) -> dict[str, tuple[int, float]]:
    """`service.ingest` (what every path runs per batch) in this process, on batches of
    5,000, one after the other and with no other thread, its SQL statements timed at the
    driver and grouped by what they do: (executions, seconds) each."""
    spent: dict[str, tuple[int, float]] = {}
    started: list[float] = []

    def before(*_: Any) -> None:
        started.append(time.perf_counter())

    def after(_connection: Any, _cursor: Any, statement: str, *__: Any) -> None:
        seconds = time.perf_counter() - started.pop()
        text = " ".join(statement.split())
        kind = next((k for k in STATEMENTS if text.startswith(k)), "other")
        runs, total = spent.get(kind, (0, 0.0))
        spent[kind] = (runs + 1, total + seconds)

    async def run() -> None:
        db = Database(Settings(database_url=database_url))
        event.listen(db.engine.sync_engine, "before_cursor_execute", before)
        event.listen(db.engine.sync_engine, "after_cursor_execute", after)
        try:
            for start in range(0, len(batch), 5000):
                async with db.unit_of_work() as session:
                    report = await service.ingest(session, organization_id,
                                                  batch[start : start + 5000], now=NOW)  # fmt: skip
                assert report.accepted == len(batch[start : start + 5000])
        finally:
            await db.dispose()

    asyncio.run(run())
    return spent


def statement_table(spent: dict[str, tuple[int, float]], copy_seconds: float) -> str:
    lines = ["| statements | executions | seconds | vs the raw COPY |", "|---|---:|---:|---:|"]
    names = {**STATEMENTS, "other": "everything else (staging, locks, partitions, plan)"}
    for kind, name in names.items():
        runs, seconds = spent.get(kind, (0, 0.0))
        lines.append(f"| {name} | {runs} | {seconds:.2f} | {seconds / copy_seconds:.1f}x |")
    total = sum(seconds for _, seconds in spent.values())
    lines.append(f"| **all of them** | {sum(r for r, _ in spent.values())} | {total:.2f} "
                 f"| {total / copy_seconds:.1f}x |")  # fmt: skip
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


def stream_import(
    postgres: PostgresCluster,
    template_database: str,
    redis_server: RedisServer,
    start_apex: Callable[..., ApexServer],
    body: bytes,
    n: int,
) -> float:
    """Seconds to stream `body` (NDJSON, compressed here first) into a fresh database."""
    database = postgres.create_database(template=template_database)
    server = start_apex(postgres.url(database), redis_server.url)
    packed = gzip.compress(body, compresslevel=6)
    with httpx.Client(base_url=server.base_url, timeout=600) as client:
        headers = {**bearer(signup(client)), "Content-Type": "application/x-ndjson",
                   "Content-Encoding": "gzip"}  # fmt: skip
        started = time.perf_counter()
        answer = client.post("/api/v1/usage/events:import", headers=headers, content=packed)
        seconds = time.perf_counter() - started
    assert answer.json()["accepted"] == n, answer.text
    assert count(postgres, database) == n
    server.stop()
    return seconds


def embedded_ingest(env: dict[str, str], path: Path, tmp_path: Path, n: int) -> float:
    """`apex ingest` into the embedded SQLite store (organisation made by `apex demo`'s
    sign-up path would take long: the organisation is inserted directly)."""
    migrate = subprocess.run([sys.executable, "-m", "apex", "migrate", "upgrade"], env=env,
                             capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert migrate.returncode == 0, migrate.stderr
    store = tmp_path / "embedded" / "apex.db"
    with sqlite3.connect(store) as connection:
        connection.execute(
            "INSERT INTO organizations (id, name, slug, tier, created_at, updated_at) VALUES "
            "(?, 'Bench', 'bench', 'mid', '2026-11-01 00:00:00', '2026-11-01 00:00:00')",
            (uuid.uuid4().hex,),
        )
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "apex", "ingest", str(path), "--org", "bench"],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    assert done.returncode == 0, done.stderr
    with sqlite3.connect(store) as connection:
        assert connection.execute("SELECT count(*) FROM usage_records").fetchone()[0] == n
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

    # The streamed import endpoint: the same file, gzip, one upload.
    import_seconds = stream_import(
        postgres, template_database, redis_server, start_apex, path.read_bytes(), n
    )

    # Where the database's time goes: the same records through `service.ingest` here.
    timed_db = postgres.create_database(template=template_database)
    spent = statement_seconds(postgres.url(timed_db), organization(postgres, timed_db), batch)
    assert count(postgres, timed_db) == n

    # The embedded default (SQLite in the data directory): `apex ingest` as a user runs it.
    embedded_env = {**env, "APEX_DATA_DIR": str(tmp_path / "embedded")}
    del embedded_env["APEX_DATABASE_URL"]
    embedded_seconds = embedded_ingest(embedded_env, path, tmp_path, n)

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
                ("`POST /api/v1/usage/events:import`, one gzip NDJSON upload", n, import_seconds),
                ("`apex ingest FILE.jsonl` on the embedded default (SQLite)", n, embedded_seconds),
            ],
            copy_seconds,
        )
        + "\n\nThe API and the CLI validate every record (pydantic), cost it from the catalogue,\n"
        "COPY the batch into a transaction-local staging table and move it with one\n"
        "`INSERT … SELECT … ON CONFLICT DO NOTHING RETURNING` to report duplicates, then add\n"
        "the new records to the usage rollups (five upserts that read the staging table); the raw\n"
        "COPY does none of that. The REST figures also include JSON over HTTP, a verdict per\n"
        "record in the answer and the commit per batch. On SQLite the batch is staged with one\n"
        "executemany and moved in two statements (no COPY, no data-modifying WITH).\n\n"
        "The SQL statements of the same records through `service.ingest` (what every path\n"
        "above runs per batch; here in the benchmark's process, batches of 5,000 one after\n"
        "the other, each statement timed at the driver), next to the raw COPY:\n\n"
        + statement_table(spent, copy_seconds)
        + "\n\nThe statements alone, with no Python at all, take the multiple of the raw COPY's\n"
        "time in the last row: that bounds every path above, whatever its Python costs.",
    )
    rates = (n / copy_seconds, n / rest_seconds[1000], n / rest_seconds[10_000], n / cli_seconds,
             n / import_seconds, n / embedded_seconds)  # fmt: skip
    print(
        "\ningest per second: COPY {:,.0f}, REST 1K {:,.0f}, 10K {:,.0f}, CLI {:,.0f}, "
        "import {:,.0f}, embedded {:,.0f}".format(*rates)
    )
