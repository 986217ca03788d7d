"""Tier 5, data: pooling, transactions, cache invalidation, migrations, read/write splitting.

Every test runs against real PostgreSQL and redis-server processes started by the harness,
and real `apex serve` subprocesses where the behaviour spans instances.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import redis
from fastapi import APIRouter, FastAPI
from sqlalchemy import text

from apex.app import create_app
from apex.kit.db import Database
from apex.kit.deps import SessionDep
from apex.settings import Settings
from tests.harness import ApexServer, PostgresCluster, RedisServer
from tests.harness.procs import eventually, wait_until
from tests.integration.conftest import migrate
from tests.integration.critical.conftest import bearer, database_name, row_counts, signup


# --- 2. transactions ------------------------------------------------------------------------
def _events(redis_url: str) -> list[dict[str, str]]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        entries: list[tuple[str, dict[str, str]]] = client.xrange("apex:events")  # type: ignore[assignment]
        return [fields for _, fields in entries]
    finally:
        client.close()


def test_transaction_rollback_integration(
    postgres: PostgresCluster,
    database_url: str,
    fresh_redis: RedisServer,
    start_apex: Callable[..., ApexServer],
) -> None:
    db = database_name(database_url)
    healthy = start_apex(database_url, fresh_redis.url)
    crashing = start_apex(database_url, fresh_redis.url, failpoints="signup.after_thread")

    with healthy.client() as ok_client, crashing.client() as bad_client:
        first = signup(ok_client, organization_slug="acme")
        assert first.status_code == 201, first.text
        assert wait_until(lambda: len(_events(fresh_redis.url)) == 1, 30)
        baseline = row_counts(postgres, db)
        assert baseline == {
            "users": 1,
            "organizations": 1,
            "memberships": 1,
            "threads": 1,
            "messages": 1,
            "outbox_messages": 1,
        }

        # Step 2 (the organisation) violates a real unique constraint after step 1 (the user).
        clash = signup(ok_client, email="second@example.test", organization_slug="acme")
        assert clash.status_code == 409
        assert clash.json() == {
            "error": "Conflict",
            "detail": "The change conflicts with existing data.",
            "reason": "uq_organizations_slug",
            "request_id": clash.headers["x-request-id"],
            "trace_id": clash.headers["x-trace-id"],
        }
        # The process raises between steps (after user, organisation, membership and thread).
        crash = signup(bad_client, email="second@example.test", organization_slug="second")
        assert crash.status_code == 500
        assert crash.json()["error"] == "InternalError"
        # Bad input is refused before any step, naming the field.
        invalid = signup(ok_client, email="not-an-email")
        assert invalid.status_code == 422
        assert [e["field"] for e in invalid.json()["errors"]] == ["email"]

        # No row of any step survived, the outbox's included: no event can ever leave.
        assert row_counts(postgres, db) == baseline
        assert len(_events(fresh_redis.url)) == 1

        # The same operation with valid data succeeds, and its event leaves after the commit.
        good = signup(ok_client, email="second@example.test", organization_slug="second")
        assert good.status_code == 201, good.text
        assert row_counts(postgres, db) == {name: count + 1 for name, count in baseline.items()}
        assert wait_until(lambda: len(_events(fresh_redis.url)) == 2, 30)
        event = _events(fresh_redis.url)[-1]
        assert event["topic"] == "user.signed_up"
        assert json.loads(event["payload"])["user_id"] == good.json()["user_id"]
        assert (
            postgres.sql("SELECT count(*) FROM outbox_messages WHERE published_at IS NULL", db)
            == "0"
        )

    assert "FailpointTriggered" in crashing.logs()  # the crash was the injected one


# --- 3. two-level cache -----------------------------------------------------------------------
def test_cache_invalidation_integration(
    database_url: str,
    fresh_redis: RedisServer,
    start_apex: Callable[..., ApexServer],
) -> None:
    servers = [
        start_apex(database_url, fresh_redis.url, cache_l1_ttl_seconds="600") for _ in range(3)
    ]
    clients = [server.client() for server in servers]
    auth = bearer(signup(clients[0]))

    def read(i: int) -> str:
        response = clients[i].get("/api/v1/organizations/current", headers=auth)
        assert response.status_code == 200, response.text
        return str(response.json()["name"])

    def write(i: int, name: str) -> None:
        response = clients[i].patch(
            "/api/v1/organizations/current", headers=auth, json={"name": name}
        )
        assert response.status_code == 200, response.text

    original = read(0)
    assert [read(i) for i in range(3)] == [original] * 3  # now cached in every instance
    org_id = (
        clients[0].get("/api/v1/users/me", headers=auth).json()["memberships"][0]["organization_id"]
    )
    l2 = redis.Redis.from_url(fresh_redis.url, decode_responses=True)
    entry = json.loads(l2.get(f"apex:cache:d:org:{org_id}") or "{}")
    assert entry["data"]["name"] == original
    assert entry["v"] == l2.get(f"apex:cache:v:org:{org_id}")  # stored under the current version
    l2.close()

    write(0, "Renamed once")
    written_at = time.perf_counter()
    delays = []
    for i in range(3):
        assert read(i) == "Renamed once"
        delays.append(time.perf_counter() - written_at)
    print(
        f"\ncache: new value visible on all 3 instances; worst delay after the write's response "
        f"{max(delays) * 1000:.1f} ms"
    )

    rng = random.Random(20261125)
    current, stale, reads, writes = "Renamed once", 0, 0, 0
    for step in range(200):
        if step == 100:
            fresh_redis.kill()
        if step == 130:
            fresh_redis.start()
        instance = rng.randrange(3)
        if rng.random() < 0.3:
            current = f"name-{step}"
            write(instance, current)
            writes += 1
        else:
            reads += 1
            stale += read(instance) != current
    # After Redis is back, every instance hears invalidations again.
    for i in range(3):
        current = f"final-{i}"
        write(i, current)
        stale += sum(read(j) != current for j in range(3))

    # Instances that miss an invalidation: their pub/sub connections are killed, so for a
    # moment (until they resubscribe) nothing tells them of a write. A copy read into L1 in
    # that moment must still not be served once another instance has written.
    admin = redis.Redis.from_url(fresh_redis.url, decode_responses=True)
    missed_rounds = 0
    for round_ in range(20):
        killed = admin.client_kill_filter(_type="pubsub")
        missed_rounds += killed > 0
        reader, writer = 1 + round_ % 2, 0
        read(reader)  # into the reader's L1, with nobody listening for its invalidation
        current = f"missed-{round_}"
        write(writer, current)
        stale += read(reader) != current
    admin.close()
    # Rounds that killed nothing found the instances still resubscribing: cut off as well.
    assert missed_rounds > 0
    print(
        f"cache: {writes} writes, {reads} reads across 3 instances with a Redis kill/restart, "
        f"then 20 writes each missed by a reader cut off from pub/sub: {stale} stale reads"
    )
    assert stale == 0
    for client in clients:
        client.close()
    for server in servers:
        assert '"status": 500' not in server.logs()
        assert "Traceback" not in server.logs()


# --- 1. connection pooling --------------------------------------------------------------------
pool_router = APIRouter(prefix="/t")


@pool_router.get("/sleep")
async def _sleep(seconds: float, session: SessionDep) -> dict[str, int]:
    """A request whose transaction holds its connection for `seconds`."""
    pid = await session.scalar(text("SELECT pg_backend_pid()"))
    await session.execute(text("SELECT pg_sleep(:s)"), {"s": seconds})
    return {"pid": int(pid or 0)}


@pool_router.get("/quick")
async def _quick(session: SessionDep) -> dict[str, int]:
    return {"one": int(await session.scalar(text("SELECT 1")) or 0)}


@asynccontextmanager
async def _pooled_app(
    url: str, **settings: Any
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    app = create_app(
        Settings(
            database_url=url, environment="test", db_pool_size=10, db_max_overflow=0, **settings
        )
    )
    app.include_router(pool_router)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://apex.test", timeout=60) as client,
    ):
        # The embedded default's start-up usage maintenance uses the pool for a moment.
        await app.state.usage_maintained.wait()
        yield app, client


async def _active_sleepers(cluster: PostgresCluster, db: str) -> list[int]:
    query = (
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'apex' AND state = 'active'"
        " AND query LIKE 'SELECT pg_sleep%'"
    )
    output = await asyncio.to_thread(cluster.sql, query, db)
    return [int(pid) for pid in output.split()]


async def test_connection_pooling_integration(fresh_postgres: PostgresCluster) -> None:
    db = fresh_postgres.create_database("apex")
    url = fresh_postgres.url(db)
    assert migrate(url, "upgrade", "head").returncode == 0

    # 15 slow requests on a pool of 10: 10 run at once, 5 wait, all 15 complete. (2 s each:
    # a wide window for the sampling below to see all ten at once on a loaded machine.)
    async with _pooled_app(url, db_pool_timeout=30) as (app, client):
        requests = [
            asyncio.create_task(client.get("/t/sleep", params={"seconds": 2})) for _ in range(15)
        ]
        peak_active, peak_waiting = 0, 0
        while not all(r.done() for r in requests):
            peak_active = max(peak_active, len(await _active_sleepers(fresh_postgres, db)))
            peak_waiting = max(peak_waiting, app.state.database.pool_status().waiting)
            await asyncio.sleep(0.05)
        statuses = [r.result().status_code for r in requests]
        print(
            f"\npool: 15 requests, pool 10 → peak {peak_active} running on PostgreSQL, "
            f"peak {peak_waiting} waiting, statuses {sorted(set(statuses))}"
        )
        assert statuses == [200] * 15
        assert peak_active == 10
        # The 5 requests beyond the pool, plus at most the outbox relay's own periodic checkout.
        assert 5 <= peak_waiting <= 6

    # A checkout timeout shorter than the work: the 5 waiting requests get a 503, nothing hangs.
    async with _pooled_app(url, db_pool_timeout=0.5) as (app, client):
        started = time.perf_counter()
        responses = await asyncio.wait_for(
            asyncio.gather(*(client.get("/t/sleep", params={"seconds": 2}) for _ in range(15))), 30
        )
        refused = [r for r in responses if r.status_code == 503]
        print(
            f"pool: checkout timeout 0.5 s → {len(refused)} x 503 in "
            f"{time.perf_counter() - started:.2f} s for the whole batch"
        )
        assert sorted(r.status_code for r in responses) == [200] * 10 + [503] * 5
        for response in refused:
            assert response.json()["error"] == "ServiceUnavailable"
            assert response.headers["retry-after"] == "1"

    # 200 backends terminated mid-transaction, with pre-ping off so nothing masks a broken
    # connection: afterwards every pooled connection works.
    async with _pooled_app(url, db_pool_timeout=30, db_pool_pre_ping=False) as (app, client):
        terminated, failed = 0, 0
        for _ in range(20):
            batch = [
                asyncio.create_task(client.get("/t/sleep", params={"seconds": 30}))
                for _ in range(10)
            ]
            pids: list[int] = []
            while len(pids) < 10:
                pids = await _active_sleepers(fresh_postgres, db)
            count = await asyncio.to_thread(
                fresh_postgres.sql,
                f"SELECT count(pg_terminate_backend(pid)) FROM unnest(ARRAY{pids}) pid",  # noqa: S608
                db,
            )
            terminated += int(count)
            results = await asyncio.wait_for(asyncio.gather(*batch), 30)
            failed += sum(r.status_code == 503 for r in results)
        assert terminated == 200
        assert failed == 200
        # Nothing stays checked out (the outbox relay may hold one for a moment each second).
        assert await eventually(lambda: app.state.database.pool_status().checked_out == 0, 30)
        rounds = [
            await asyncio.gather(*(client.get("/t/quick") for _ in range(10))) for _ in range(20)
        ]
        broken = sum(r.status_code != 200 for batch in rounds for r in batch)
        print(
            f"pool: {terminated} mid-transaction terminations → {failed} clean 503s, "
            f"{broken} broken connections found in the pool afterwards"
        )
        assert broken == 0

        # Cancelled requests (the client went away) leave nothing checked out or idle in a
        # transaction.
        cancelled = [
            asyncio.create_task(client.get("/t/sleep", params={"seconds": 30})) for _ in range(10)
        ]
        while len(await _active_sleepers(fresh_postgres, db)) < 10:  # noqa: ASYNC110 (polls PostgreSQL)
            await asyncio.sleep(0.02)
        for task in cancelled:
            task.cancel()
        await asyncio.gather(*cancelled, return_exceptions=True)
        assert await eventually(lambda: app.state.database.pool_status().checked_out == 0, 30)
        idle_in_tx = "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'"
        assert await asyncio.to_thread(fresh_postgres.sql, idle_in_tx, db) == "0"
        assert [
            r.status_code
            for r in await asyncio.gather(*(client.get("/t/quick") for _ in range(10)))
        ] == [200] * 10

    # 100 concurrent requests on a pool of 10.
    async with _pooled_app(url) as (app, client):
        responses = await asyncio.gather(*(client.get("/t/quick") for _ in range(100)))
        rate = 100 * sum(r.status_code == 200 for r in responses) / len(responses)
        print(f"pool: 100 concurrent requests on a pool of 10 → {rate:.1f}% succeeded")
        assert rate >= 99.5

        # PostgreSQL killed under load, then restarted: only in-flight requests fail, and Apex
        # recovers without a restart.
        killed = asyncio.Event()
        in_flight, outcomes = 0, {"ok": 0, "failed": 0}
        in_flight_at_kill = -1

        async def worker() -> None:
            nonlocal in_flight
            while not killed.is_set():
                in_flight += 1
                response = await client.get("/t/quick")
                in_flight -= 1
                outcomes["ok" if response.status_code == 200 else "failed"] += 1

        workers = [asyncio.create_task(worker()) for _ in range(20)]
        await asyncio.sleep(1.0)
        killed.set()  # no new request starts from here on
        in_flight_at_kill = in_flight
        await asyncio.to_thread(fresh_postgres.kill)
        await asyncio.wait_for(asyncio.gather(*workers), 60)
        print(
            f"pool: PostgreSQL killed with {in_flight_at_kill} requests in flight "
            f"({outcomes['ok']} succeeded before) → {outcomes['failed']} failed"
        )
        assert outcomes["failed"] <= in_flight_at_kill

        fresh_postgres.start()  # from the main thread: the harness ties children to it
        accepting = time.perf_counter()
        first = await client.get("/t/quick")
        recovery = time.perf_counter() - accepting
        after = await asyncio.gather(*(client.get("/t/quick") for _ in range(200)))
        print(
            f"pool: recovery {recovery * 1000:.1f} ms after PostgreSQL accepted connections; "
            f"{sum(r.status_code == 200 for r in after)}/200 requests succeeded afterwards"
        )
        assert first.status_code == 200
        assert [r.status_code for r in after] == [200] * 200

    # Restarted while a pool sat idle, with nothing else using it to find out (no relay, no
    # failed request): connections idle past APEX_DB_POOL_PING_IDLE_SECONDS (1 s) are pinged
    # before use, so no unit of work meets a dead one. Back-to-back ones skip the ping.
    database = Database(
        Settings(database_url=url, environment="test", db_pool_size=5, db_max_overflow=0)
    )

    async def select_one() -> int:
        async with database.unit_of_work() as session:
            return int(await session.scalar(text("SELECT 1")) or 0)

    try:
        assert await asyncio.gather(*(select_one() for _ in range(5))) == [1] * 5
        await asyncio.to_thread(fresh_postgres.kill)
        fresh_postgres.start()
        await asyncio.sleep(1.2)
        after_idle = await asyncio.gather(*(select_one() for _ in range(5)), return_exceptions=True)
        assert after_idle == [1] * 5, after_idle
    finally:
        await database.dispose()


# --- 5. read/write splitting ------------------------------------------------------------------
USER_READ = "SELECT users.email"  # the one users query of GET /api/v1/users/me
WRITES = ("INSERT INTO", "UPDATE ", "DELETE FROM")


def _logged(cluster: PostgresCluster, fragment: str) -> int:
    """Statements containing `fragment` that this server executed (it logs every statement)."""
    return sum(
        fragment in line and ("statement:" in line or "execute " in line)
        for line in cluster.log_path.read_text(errors="replace").splitlines()
    )


MAX_LAG_S = 8


def test_read_write_splitting_integration(
    fresh_postgres: PostgresCluster,
    fresh_redis: RedisServer,
    start_apex: Callable[..., ApexServer],
) -> None:
    db = fresh_postgres.create_database("apex")
    assert migrate(fresh_postgres.url(db), "upgrade", "head").returncode == 0
    # Both servers log every statement they execute: that is what the test counts.
    fresh_postgres.sql("ALTER SYSTEM SET log_statement = 'all'")
    fresh_postgres.sql("SELECT pg_reload_conf()")
    replica = fresh_postgres.add_replica()  # inherits the setting with the base backup
    server = start_apex(
        fresh_postgres.url(db),
        fresh_redis.url,
        database_replica_urls=replica.url(db),
        read_your_writes_seconds="1",
        # Generous: the paused replica must still count as usable for a few requests below,
        # however slowly a loaded machine sends them.
        replica_max_lag_seconds=str(MAX_LAG_S),
        replica_retry_seconds="1",
    )
    client = server.client()
    writer = bearer(signup(client))
    reader = bearer(signup(client))
    time.sleep(1.1)  # the sign-ups' read-your-writes windows end

    def names(auth: dict[str, str]) -> str:
        response = client.get("/api/v1/users/me", headers=auth)
        assert response.status_code == 200, response.text
        return str(response.json()["memberships"][0]["organization_name"])

    # 1,000 reads, counted on the replica's side.
    replica_before, primary_before = _logged(replica, USER_READ), _logged(fresh_postgres, USER_READ)
    started = time.perf_counter()
    for _ in range(1000):
        names(reader)
    elapsed = time.perf_counter() - started
    replica_reads = _logged(replica, USER_READ) - replica_before
    primary_reads = _logged(fresh_postgres, USER_READ) - primary_before
    print(
        f"\nsplit: 1000 reads in {elapsed:.1f} s → {replica_reads} executed by the replica, "
        f"{primary_reads} by the primary"
    )
    assert replica_reads == 1000
    assert primary_reads == 0

    # Replay paused: the writer reads its own write (primary); others may see the replica's past.
    replica.pause_replay()
    before = names(reader)
    patched = client.patch(
        "/api/v1/organizations/current", headers=writer, json={"name": "After the write"}
    )
    assert patched.status_code == 200
    assert names(writer) == "After the write"
    reader_org = client.patch(
        "/api/v1/organizations/current", headers=reader, json={"name": "Reader renamed"}
    )
    assert reader_org.status_code == 200
    time.sleep(1.1)  # the reader's own window ends: its reads go back to the (paused) replica
    assert names(reader) == before  # served by the paused replica: proof reads really go there
    # Once the replica is further behind than the threshold, it is skipped.
    assert wait_until(lambda: names(reader) == "Reader renamed", MAX_LAG_S + 30)
    replica.resume_replay()
    fresh_postgres.wait_for_replica(replica)

    # Replica stopped: no read fails, the primary serves them; restarted: reads return to it.
    replica.stop()
    failures = sum(
        client.get("/api/v1/users/me", headers=reader).status_code != 200 for _ in range(200)
    )
    assert failures == 0
    replica.start()

    def served_by_replica() -> bool:
        before = _logged(replica, USER_READ)
        names(reader)
        return _logged(replica, USER_READ) > before

    assert wait_until(served_by_replica, 30)  # the retry interval passed, the lag caught up
    returned_before = _logged(replica, USER_READ)
    for _ in range(100):
        names(reader)
    returned = _logged(replica, USER_READ) - returned_before
    print(
        f"split: replica stopped → 0/200 reads failed; restarted → {returned}/100 reads back on it"
    )
    assert returned == 100
    assert sum(_logged(replica, write) for write in WRITES) == 0

    health = client.get("/health/ready").json()
    assert [c["status"] for c in health["checks"] if c["name"].startswith("replica:")] == ["ok"]
    client.close()
    for log in (server.logs(), replica.log_path.read_text(), fresh_postgres.log_path.read_text()):
        assert "read-only transaction" not in log


# --- 4. zero-downtime migrations ----------------------------------------------------------------
MIGRATIONS = Path(__file__).parent / "migrations"
SEEDED = 3000
CHECKSUM = (
    "SELECT md5(string_agg(id::text || '|' || name || '|' || slug || '|' || tier, ',' ORDER BY id))"
    " FROM organizations WHERE slug LIKE 'seed-%'"
)


class _Traffic:
    """Continuous reads and writes against a real server, from a background thread."""

    def __init__(self, server: ApexServer) -> None:
        self.server = server
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        """Every request that does not answer 200/201 is a failure — a refused connection,
        a timeout or any other exception included, never dropped."""
        try:
            with self.server.client() as client:
                auth = bearer(signup(client))
                requests: list[Callable[[], httpx.Response]] = [
                    lambda: client.get("/api/v1/organizations/current", headers=auth),
                    lambda: client.get("/api/v1/users/me", headers=auth),
                    lambda: client.patch(
                        "/api/v1/organizations/current", headers=auth, json={"name": f"n{self.ok}"}
                    ),
                    lambda: signup(client),
                ]
                while not self._stop.is_set():
                    for send in requests:
                        self._record(send)
        except Exception as exc:  # the traffic itself broke: that is a failure too
            self.failures.append(f"traffic stopped: {type(exc).__name__}: {exc}")

    def _record(self, send: Callable[[], httpx.Response]) -> None:
        try:
            response = send()
        except Exception as exc:
            self.failures.append(f"{type(exc).__name__}: {exc}")
            return
        if response.status_code in (200, 201):
            self.ok += 1
        else:
            self.failures.append(f"{response.request.url.path} {response.status_code}")

    def __enter__(self) -> _Traffic:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(30)
        if self._thread.is_alive():
            self.failures.append("traffic did not stop within 30 s")


def test_database_migration_integration(
    postgres: PostgresCluster,
    database_url: str,
    redis_server: RedisServer,
    start_apex: Callable[..., ApexServer],
) -> None:
    db = database_name(database_url)
    seed = (
        "INSERT INTO organizations (id, name, slug, tier, created_at, updated_at)"
        " SELECT gen_random_uuid(), 'Seed ' || g, 'seed-' || g, 'free', now(), now()"
        " FROM generate_series(1, %d) g"
    )
    postgres.sql(seed % SEEDED, db)
    before = postgres.sql(CHECKSUM, db)
    server = start_apex(database_url, redis_server.url)
    expand = str(MIGRATIONS / "expand")
    both = f"{expand},{MIGRATIONS / 'failing'}"

    def apex_migrate(*args: str, locations: str = expand) -> subprocess.CompletedProcess[str]:
        return migrate(database_url, *args, extra_locations=locations)

    with _Traffic(server) as traffic:
        started = time.perf_counter()
        upgraded = apex_migrate("upgrade", "heads")
        took = time.perf_counter() - started
        time.sleep(0.5)
    print(
        f"\nmigration: expand revision under load in {took:.2f} s; {traffic.ok} requests ok, "
        f"{len(traffic.failures)} failed"
    )
    assert upgraded.returncode == 0, upgraded.stderr
    assert traffic.ok > 0
    assert traffic.failures == []
    assert postgres.sql(CHECKSUM, db) == before
    backfilled = "SELECT count(*) FROM organizations WHERE display_label = upper(name)"
    assert postgres.sql(f"{backfilled} AND slug LIKE 'seed-%'", db) == str(SEEDED)
    index_valid = "SELECT indisvalid FROM pg_index WHERE indexrelid = '{}'::regclass"
    assert postgres.sql(index_valid.format("ix_organizations_display_label"), db) == "t"
    assert "zdt_0001" in apex_migrate("current").stdout

    # Downgrade keeps the data; upgrade again works.
    assert apex_migrate("downgrade", "zdt_test@base").returncode == 0
    assert (
        postgres.sql(
            "SELECT count(*) FROM information_schema.columns WHERE column_name = 'display_label'",
            db,
        )
        == "0"
    )
    assert postgres.sql(CHECKSUM, db) == before
    assert apex_migrate("upgrade", "heads").returncode == 0

    # A failing revision rolls back whole; `apex migrate current` still reports the previous one.
    failed = apex_migrate("upgrade", "heads", locations=both)
    assert failed.returncode == 1
    assert "Migration failed" in failed.stderr
    assert "division by zero" in failed.stderr
    current = apex_migrate("current", locations=both).stdout
    assert "zdt_0001" in current
    assert "zdt_0002" not in current
    assert postgres.sql("SELECT to_regclass('zdt_half_done') IS NULL", db) == "t"
    nullable = (
        "SELECT is_nullable FROM information_schema.columns WHERE column_name = 'display_label'"
    )
    assert postgres.sql(nullable, db) == "YES"

    # Two `apex migrate` at once: one waits on the advisory lock, both succeed, applied once.
    assert apex_migrate("downgrade", "zdt_test@base").returncode == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith("APEX_")}
    env |= {"APEX_DATABASE_URL": database_url, "APEX_MIGRATION_EXTRA_LOCATIONS": expand}
    command = [sys.executable, "-m", "apex", "migrate", "upgrade", "heads"]
    racers = [
        subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    results = [racer.communicate(timeout=120) for racer in racers]
    assert [racer.returncode for racer in racers] == [0, 0], results
    waited = [err for _, err in results if "holds the migration lock; waiting" in err]
    # At least one waited for the other (both may, if the previous run's backend still held
    # the lock for a moment while exiting).
    assert len(waited) >= 1
    assert (
        postgres.sql("SELECT count(*) FROM alembic_version WHERE version_num = 'zdt_0001'", db)
        == "1"
    )
    assert postgres.sql(CHECKSUM, db) == before
