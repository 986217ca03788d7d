"""Tier 5, data: pooling, transactions, cache invalidation, migrations, read/write splitting.

Every test runs against real PostgreSQL and redis-server processes started by the harness,
and real `apex serve` subprocesses where the behaviour spans instances.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable

import httpx
import redis

from tests.harness import ApexServer, PostgresCluster, RedisServer
from tests.harness.procs import wait_until
from tests.integration.critical.conftest import bearer, database_name, row_counts, signup


# --- 2. transactions ------------------------------------------------------------------------
def _events(redis_url: str) -> list[dict[str, str]]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        return [fields for _, fields in client.xrange("apex:events")]
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
        assert wait_until(lambda: len(_events(fresh_redis.url)) == 1, 10)
        baseline = row_counts(postgres, db)
        assert baseline == {"users": 1, "organizations": 1, "memberships": 1, "threads": 1,
                            "messages": 1, "outbox_messages": 1}

        # Step 2 (the organisation) violates a real unique constraint after step 1 (the user).
        clash = signup(ok_client, email="second@example.test", organization_slug="acme")
        assert clash.status_code == 409
        assert clash.json() == {
            "error": "Conflict",
            "detail": "The change conflicts with existing data.",
            "reason": "uq_organizations_slug",
        }
        # The process raises between steps (after user, organisation, membership and thread).
        crash = signup(bad_client, email="second@example.test", organization_slug="second")
        assert crash.status_code == 500
        assert crash.json()["error"] == "InternalError"
        # Bad input is refused before any step, naming the field.
        invalid = signup(ok_client, email="not-an-email")
        assert invalid.status_code == 422
        assert [e["field"] for e in invalid.json()["errors"]] == ["email"]

        time.sleep(1.5)  # longer than the outbox relay's interval: anything pending would go now
        assert row_counts(postgres, db) == baseline
        assert len(_events(fresh_redis.url)) == 1

        # The same operation with valid data succeeds, and its event leaves after the commit.
        good = signup(ok_client, email="second@example.test", organization_slug="second")
        assert good.status_code == 201, good.text
        assert row_counts(postgres, db) == {name: count + 1 for name, count in baseline.items()}
        assert wait_until(lambda: len(_events(fresh_redis.url)) == 2, 10)
        event = _events(fresh_redis.url)[-1]
        assert event["topic"] == "user.signed_up"
        assert json.loads(event["payload"])["user_id"] == good.json()["user_id"]
        assert postgres.sql("SELECT count(*) FROM outbox_messages WHERE published_at IS NULL", db) == "0"

    assert "FailpointTriggered" in crashing.logs()  # the crash was the injected one


# --- 3. two-level cache -----------------------------------------------------------------------
def test_cache_invalidation_integration(
    database_url: str,
    fresh_redis: RedisServer,
    start_apex: Callable[..., ApexServer],
) -> None:
    servers = [start_apex(database_url, fresh_redis.url, cache_l1_ttl_seconds="600") for _ in range(3)]
    clients = [server.client() for server in servers]
    auth = bearer(signup(clients[0]))

    def read(i: int) -> str:
        response = clients[i].get("/api/v1/organizations/current", headers=auth)
        assert response.status_code == 200, response.text
        return str(response.json()["name"])

    def write(i: int, name: str) -> None:
        response = clients[i].patch("/api/v1/organizations/current", headers=auth, json={"name": name})
        assert response.status_code == 200, response.text

    original = read(0)
    assert [read(i) for i in range(3)] == [original] * 3  # now cached in every instance
    org_id = clients[0].get("/api/v1/users/me", headers=auth).json()["memberships"][0]["organization_id"]
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
    print(f"\ncache: new value visible on all 3 instances; worst delay after the write's response "
          f"{max(delays) * 1000:.1f} ms")

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
    print(f"cache: {writes} writes, {reads} reads across 3 instances with a Redis kill/restart: "
          f"{stale} stale reads")
    assert stale == 0
    for client in clients:
        client.close()
    for server in servers:
        assert " 500" not in server.logs() and "Traceback" not in server.logs()
