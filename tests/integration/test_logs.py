"""A real `apex serve` writes one JSON object per line, with request ids and no secrets."""

from __future__ import annotations

import json
from collections.abc import Callable

from tests.harness import ApexServer, RedisServer


def test_json_logs_carry_the_request_id_and_no_secret(
    database_url: str, redis_server: RedisServer, start_apex: Callable[..., ApexServer]
) -> None:
    password = "pw-that-must-not-leak"  # trust auth accepts any password
    with_password = database_url.replace("postgres@", f"postgres:{password}@")
    server = start_apex(with_password, redis_server.url)
    with server.client() as client:
        assert (
            client.get("/health/ready", headers={"X-Request-ID": "trace-me-42"}).status_code == 200
        )
        assert client.get("/missing", params={"token": "query-secret"}).status_code == 404
    server.stop()

    lines = [line for line in server.logs().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    ours = [r for r in records if r.get("request_id") == "trace-me-42"]
    assert [(r["event"], r["path"], r["status"]) for r in ours] == [
        ("request", "/health/ready", 200)
    ]
    missing = [r for r in records if r.get("path") == "/missing"]
    assert len(missing) == 1
    assert missing[0]["status"] == 404
    assert len(missing[0]["request_id"]) == 32
    started = next(r for r in records if r["event"] == "apex_started")
    assert "***" in started["database"]
    assert password not in server.logs()
    assert "query-secret" not in server.logs()
    assert {r["level"] for r in records} <= {"debug", "info", "warning", "error", "critical"}
