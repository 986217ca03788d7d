"""`apex serve` refuses, clearly, to run on a database that was never migrated."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.harness import ApexServer, HarnessError, PostgresCluster, RedisServer
from tests.integration.conftest import migrate


def test_serve_refuses_an_unmigrated_database_and_names_the_fix(
    postgres: PostgresCluster, redis_server: RedisServer, start_apex: Callable[..., ApexServer]
) -> None:
    name = postgres.create_database()
    url = postgres.url(name)
    with pytest.raises(HarnessError, match="exited during start-up") as failure:
        start_apex(url, redis_server.url)
    assert "The database schema is at an empty database" in str(failure.value)
    assert "Run `apex migrate upgrade`" in str(failure.value)

    assert migrate(url, "upgrade").returncode == 0
    server = start_apex(url, redis_server.url)
    with server.client() as client:
        assert client.get("/health/ready").status_code == 200
    postgres.drop_database(name)
