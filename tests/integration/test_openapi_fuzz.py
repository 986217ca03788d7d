"""Schemathesis against a real server's /openapi.json: generated requests to every operation
never cause a server error, and no operation that declares authentication works without it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import ignored_auth

from tests.harness import ApexServer, PostgresCluster, RedisServer
from tests.harness.payments import PaymentsServer
from tests.integration.conftest import apex_env
from tests.integration.critical.conftest import bearer, signup

_server: dict[str, Any] = {}


@schemathesis.serializer("application/x-ndjson")
def _ndjson(_: Any, value: Any) -> bytes:
    """The import endpoint's body is text (NDJSON lines); whatever was generated, as text."""
    return value.encode() if isinstance(value, str) else str(value).encode()


@pytest.fixture(scope="module")
def api_schema(
    postgres: PostgresCluster, template_database: str, redis_server: RedisServer
) -> Iterator[Any]:
    name = postgres.create_database(template=template_database)
    payments = PaymentsServer().start()  # billing as configured in production
    env = apex_env(postgres.url(name), redis_server.url, **payments.apex_settings())
    server = ApexServer(env).start()
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        _server["auth"] = bearer(signup(client))
    schema = schemathesis.openapi.from_url(f"{server.base_url}/openapi.json")
    # Logging out would revoke the token the other generated requests use.
    yield schema.exclude(path_regex="logout")
    server.stop()
    payments.stop()
    postgres.drop_database(name)


def test_generated_requests_never_fail_the_server(api_schema: Any) -> None:
    """Every operation, 15 generated requests each (pytest 9 and schemathesis's own
    parametrisation disagree, so the operations are walked here)."""
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 15

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), database=None
        )
        def check(case: Any) -> None:
            case.call_and_validate(
                headers=_server["auth"], checks=[not_a_server_error, ignored_auth]
            )

        check()
