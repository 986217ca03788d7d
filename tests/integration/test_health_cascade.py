"""Readiness of a real `apex serve` follows its dependencies down and back up."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import httpx
import redis

from tests.harness import ApexServer, PostgresCluster, RedisServer
from tests.harness.procs import wait_until
from tests.integration.critical.conftest import bearer, signup


def _ready(client: httpx.Client) -> tuple[int, dict[str, dict[str, Any]]]:
    response = client.get("/health/ready")
    return response.status_code, {check["name"]: check for check in response.json()["checks"]}


def test_readiness_follows_redis_and_postgres(
    fresh_postgres: PostgresCluster,
    fresh_redis: RedisServer,
    start_apex: Callable[..., ApexServer],
) -> None:
    fresh_postgres.create_database("apex")
    server = start_apex(fresh_postgres.url("apex"), fresh_redis.url, auto_migrate="true")
    with server.client() as client:
        auth = bearer(signup(client))
        status, checks = _ready(client)
        assert status == 200  # degraded, not down: no `apex worker` takes the queue's jobs
        assert {name: c["status"] for name, c in checks.items()} == {
            "database": "ok",
            "redis": "ok",
            "queue": "fail",
            "mail": "ok",
        }
        assert all(c["latency_ms"] >= 0 for c in checks.values())

        # Redis dies: the very next readiness answer is 503 and names Redis.
        fresh_redis.kill()
        status, checks = _ready(client)
        assert status == 503
        assert checks["redis"]["status"] == "fail"
        assert checks["redis"]["error"]
        assert checks["database"]["status"] == "ok"
        assert client.get("/health/live").status_code == 200  # the process itself is fine
        # Reads fall back to the database; what needs Redis answers a 503 to retry, not a 500.
        assert client.get("/api/v1/users/me", headers=auth).status_code == 200
        logout = client.post("/api/v1/auth/logout", headers=auth)
        assert logout.status_code == 503
        assert logout.json()["error"] == "ServiceUnavailable"
        assert logout.headers["retry-after"] == "2"

        fresh_redis.start()
        status, checks = _ready(client)
        assert status == 200, checks["redis"]["error"]

        # Same for PostgreSQL, with pooled connections that all died with the server.
        fresh_postgres.kill()
        status, checks = _ready(client)
        assert status == 503
        assert checks["database"]["status"] == "fail"
        assert checks["database"]["error"]
        assert checks["redis"]["status"] == "ok"

        fresh_postgres.start()
        assert wait_until(lambda: _ready(client)[0] == 200, server_check_timeout(server))
        for _ in range(5):  # and it stays healthy: every pooled connection was replaced
            status, checks = _ready(client)
            assert status == 200, checks["redis"]["error"]
        assert checks["database"]["status"] == "ok"

    assert "Traceback" not in server.logs()


def server_check_timeout(server: ApexServer) -> float:
    """One readiness check interval of that server (its per-check timeout)."""
    return float(server.env.get("APEX_HEALTH_CHECK_TIMEOUT", "2.0"))


def _blocked(url: str) -> bool:
    """True once Redis stops answering (it is busy executing DEBUG SLEEP)."""
    probe = redis.Redis.from_url(url, socket_timeout=0.1)
    try:
        probe.ping()
        return False
    except redis.TimeoutError:
        return True
    finally:
        probe.close()


def test_readiness_reports_a_hung_dependency_within_its_timeout(
    fresh_postgres: PostgresCluster,
    fresh_redis: RedisServer,
    start_apex: Callable[..., ApexServer],
) -> None:
    """A Redis that accepts connections but never answers is a failed check with a timeout
    error, not a hung readiness endpoint."""
    fresh_postgres.create_database("apex")
    server = start_apex(
        fresh_postgres.url("apex"),
        fresh_redis.url,
        auto_migrate="true",
        health_check_timeout="0.5",
        redis_socket_timeout="5",
    )
    blocker = redis.Redis.from_url(fresh_redis.url, socket_timeout=10)
    sleeper = threading.Thread(target=blocker.execute_command, args=("DEBUG", "SLEEP", "5"))
    with server.client() as client:
        assert client.get("/health/ready").status_code == 200
        sleeper.start()
        assert wait_until(lambda: _blocked(fresh_redis.url), 10)
        status, checks = _ready(client)
        sleeper.join()
        assert status == 503
        assert checks["redis"]["error"] == "timed out after 0.5s"
        assert checks["database"]["status"] == "ok"
        assert wait_until(lambda: _ready(client)[0] == 200, 30)
    blocker.close()
