"""Checkout-and-query round trip: Apex's unit of work vs raw asyncpg, same server, same run."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import asyncpg
from sqlalchemy import text

from apex.kit.db import Database
from apex.settings import Settings
from tests.performance.report import Timing, timing_table, write_section

ROUNDS = 3000
WARMUP = 200


async def _measure(name: str, once: Callable[[], Awaitable[int]]) -> Timing:
    for _ in range(WARMUP):
        await once()
    samples, total = [], 0
    for _ in range(ROUNDS):
        started = time.perf_counter()
        total += await once()
        samples.append(time.perf_counter() - started)
    assert total == ROUNDS  # every round trip returned its row
    return Timing(name, samples)


async def test_checkout_and_query_round_trip(database_url: str) -> None:
    raw_pool = await asyncpg.create_pool(database_url, min_size=10, max_size=10)
    database = Database(Settings(database_url=database_url, environment="test"))
    no_ping = Database(
        Settings(database_url=database_url, environment="test", db_pool_pre_ping=False)
    )
    every_checkout = Database(
        Settings(database_url=database_url, environment="test", db_pool_ping_idle_seconds=0)
    )

    async def raw() -> int:
        async with raw_pool.acquire() as connection:
            return int(await connection.fetchval("SELECT 1"))

    async def raw_transaction() -> int:  # the same statements as a unit of work sends
        async with raw_pool.acquire() as connection, connection.transaction():
            return int(await connection.fetchval("SELECT 1"))

    def unit_of_work(db: Database) -> Callable[[], Awaitable[int]]:
        async def once() -> int:
            async with db.unit_of_work() as session:
                return int(await session.scalar(text("SELECT 1")) or 0)

        return once

    try:
        baseline = await _measure("raw asyncpg pool (baseline)", raw)
        in_transaction = await _measure(
            "raw asyncpg pool, BEGIN + SELECT 1 + COMMIT", raw_transaction
        )
        ours = await _measure(
            "Apex unit of work (the default: pinged when idle 1 s or more)",
            unit_of_work(database),
        )
        pinged = await _measure(
            "Apex unit of work, pinged at every checkout", unit_of_work(every_checkout)
        )
        unpinged = await _measure("Apex unit of work, pre-ping off", unit_of_work(no_ping))
    finally:
        await raw_pool.close()
        await database.dispose()
        await no_ping.dispose()
        await every_checkout.dispose()

    variants = [baseline, in_transaction, ours, pinged, unpinged]
    assert [len(t.samples) for t in variants] == [ROUNDS] * 5
    write_section(
        "db_roundtrip",
        "Database: checkout-and-query round trip",
        f"{ROUNDS} sequential `SELECT 1` round trips after {WARMUP} warm-up ones, each checking a\n"
        "connection out of a pool of 10 on the same throwaway PostgreSQL.\n\n"
        + timing_table(variants, baseline)
        + "\n\nA unit of work sends BEGIN, the statement and COMMIT (the second row sends the\n"
        "same through raw asyncpg); the rest of the difference is SQLAlchemy's session and\n"
        "pool bookkeeping. A pre-ping (`APEX_DB_POOL_PRE_PING`) is BEGIN, `;` and ROLLBACK:\n"
        "by default only a connection idle for `APEX_DB_POOL_PING_IDLE_SECONDS` (1) or more\n"
        "gets one, which is where a PostgreSQL restart would otherwise go unnoticed; these\n"
        "back-to-back rounds skip it.",
    )
    print(f"\nround trip p50: asyncpg {baseline.p50_ms:.3f} ms, Apex {ours.p50_ms:.3f} ms")
