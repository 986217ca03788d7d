"""The online conversion of `usage_records` to partitions (revision 2026_11_26_0012) on a
table of a million records, while a reader and a writer keep working, against the offline
way (copying every record into a partitioned table, which blocks both for its duration)."""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from dataclasses import dataclass, field

import asyncpg

from tests.harness import PostgresCluster
from tests.integration.conftest import migrate
from tests.performance.report import write_section

RECORDS = 1_000_000
ORG = uuid.UUID("00000000-0000-0000-0000-00000000be0c")
FILL = f"""
INSERT INTO organizations (id, name, slug, tier, created_at, updated_at)
VALUES ('{ORG}', 'Bench', 'bench', 'mid', now(), now());
INSERT INTO usage_records (id, organization_id, record_id, occurred_at, provider, model,
  workload, input_tokens, cached_input_tokens, cache_write_tokens, output_tokens,
  reasoning_tokens, latency_ms, status, cost_nanos, cost_source, prompt_hash, prefix_hash,
  prefix_tokens, end_user, metadata, ingested_at)
SELECT gen_random_uuid(), '{ORG}', 'rec-' || g,
  timestamptz '2026-10-01' + (g % 2592000) * interval '1 second', 'openai', 'gpt-4o',
  'w' || (g % 7), 1000, 0, 0, 200, 0, 800, 'ok', 4500000, 'catalogue', 'p' || g, 'sys', 400,
  'u' || (g % 100), NULL, now()
FROM generate_series(1, {RECORDS}) g;
"""  # noqa: S608
READ = (
    "SELECT count(*) FROM usage_records WHERE organization_id = $1 "
    "AND occurred_at >= '2026-10-15' AND occurred_at < '2026-10-15 00:01'"
)
# What an instance of the previous version writes (its own columns; no retention class).
WRITE = (
    "INSERT INTO usage_records (id, organization_id, record_id, occurred_at, provider, model, "
    "workload, input_tokens, cached_input_tokens, cache_write_tokens, output_tokens, "
    "reasoning_tokens, status, cost_nanos, cost_source, prefix_tokens, ingested_at) VALUES "
    "(gen_random_uuid(), $1, $2, '2026-10-20', 'openai', 'gpt-4o', 'w', 1, 0, 0, 1, 0, 'ok', "
    "1, 'catalogue', 0, now())"
)


@dataclass
class Probe:
    """One client doing the same statement every 20 ms; its slowest answer."""

    statement: str
    operations: int = 0
    worst: float = 0.0
    errors: list[str] = field(default_factory=list)

    async def run(self, url: str, stop: asyncio.Event) -> None:
        connection = await asyncpg.connect(url)
        try:
            while not stop.is_set():
                started = time.perf_counter()
                try:
                    if self.statement is WRITE:
                        await connection.execute(WRITE, ORG, f"probe-{uuid.uuid4()}")
                    else:
                        await connection.fetchval(self.statement, ORG)
                except asyncpg.PostgresError as exc:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                self.operations += 1
                self.worst = max(self.worst, time.perf_counter() - started)
                await asyncio.sleep(0.02)
        finally:
            await connection.close()


async def convert_under_load(url: str, database_url: str) -> tuple[float, Probe, Probe]:
    reader, writer = Probe(READ), Probe(WRITE)
    stop = asyncio.Event()
    probes = [asyncio.create_task(p.run(url, stop)) for p in (reader, writer)]
    await asyncio.sleep(1)
    started = time.perf_counter()
    done = await asyncio.to_thread(migrate, database_url, "upgrade", "head")
    seconds = time.perf_counter() - started
    assert done.returncode == 0, done.stderr
    stop.set()
    await asyncio.gather(*probes)
    return seconds, reader, writer


async def offline_copy_seconds(url: str) -> float:
    """The offline baseline: every record copied into an indexed partitioned table and every
    id into a dedup table, in one transaction (what readers and writers would wait for),
    then thrown away."""
    connection = await asyncpg.connect(url)
    try:
        started = time.perf_counter()
        async with connection.transaction():
            for statement in OFFLINE:
                await connection.execute(statement)
        seconds = time.perf_counter() - started
        await connection.execute("DROP TABLE copy_twin, copy_twin_ids")
        return seconds
    finally:
        await connection.close()


OFFLINE = [
    "CREATE TABLE copy_twin (LIKE usage_records) PARTITION BY RANGE (occurred_at)",
    "CREATE TABLE copy_twin_all PARTITION OF copy_twin FOR VALUES FROM (MINVALUE) TO (MAXVALUE)",
    "CREATE INDEX ON copy_twin (organization_id, occurred_at)",
    "CREATE TABLE copy_twin_ids (organization_id uuid, record_id varchar(200), "
    "occurred_at timestamptz, PRIMARY KEY (organization_id, record_id))",
    "INSERT INTO copy_twin SELECT * FROM usage_records",
    "INSERT INTO copy_twin_ids SELECT organization_id, record_id, occurred_at FROM usage_records",
]


def test_partitioning_migration_under_load(postgres: PostgresCluster) -> None:
    database = postgres.create_database()
    database_url = postgres.url(database)
    url = database_url.replace("postgresql+asyncpg://", "postgresql://")
    try:
        assert migrate(database_url, "upgrade", "2026_11_26_0011").returncode == 0
        postgres.sql(FILL, database)
        postgres.sql("VACUUM ANALYZE usage_records", database)
        baseline = asyncio.run(offline_copy_seconds(url))
        seconds, reader, writer = asyncio.run(convert_under_load(url, database_url))
        ids = int(postgres.sql("SELECT count(*) FROM usage_record_ids", database))
        assert ids >= RECORDS
        assert reader.errors == []
        assert writer.errors == []
    finally:
        postgres.drop_database(database)
    write_section(
        "partitioning",
        "Partitioning `usage_records` online (revision 2026_11_26_0012)",
        f"{RECORDS:,} existing records; a reader (an indexed count) and a writer (an instance\n"
        "of the previous version storing a record) each send a statement every 20 ms\n"
        "throughout `apex migrate upgrade`.\n\n"
        "| | seconds |\n|---|---:|\n"
        f"| the migration, end to end | {seconds:.1f} |\n"
        f"| longest wait of a write during it ({writer.operations} writes, 0 errors) | "
        f"{writer.worst:.2f} |\n"
        f"| longest wait of a read during it ({reader.operations} reads, 0 errors) | "
        f"{reader.worst:.3f} |\n"
        f"| baseline: an offline conversion (the records copied into an indexed partitioned "
        f"table and their ids into a dedup table; reads and writes wait for all of it) | "
        f"{baseline:.1f} |\n\n"
        "Writers wait while the ids stored during the first, unlocked copy are added (an\n"
        "anti-join under a SHARE lock); readers only for the final renames and the attach.\n"
        f"Python {sys.version.split()[0]}, {os.cpu_count()} cores.",
    )
