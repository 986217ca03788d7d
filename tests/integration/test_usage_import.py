"""Streamed NDJSON imports (`POST /api/v1/usage/events:import`) into a real `apex serve` on
PostgreSQL: progress visible while the upload is still arriving, exact counts, the verdicts
of the problem lines, a broken upload that keeps what committed, and `apex ingest --url`."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from tests.harness import ApexServer, PostgresCluster, RedisServer
from tests.harness.procs import wait_until
from tests.integration.critical.conftest import bearer, database_name, signup
from tests.integration.test_usage_ingestion import GPT4O_CALL_NANOS, _record, _sum_and_count

IMPORT = "/api/v1/usage/events:import"
NDJSON = {"Content-Type": "application/x-ndjson"}
RECORDS = 12_000  # more than two chunks of 5,000


def _lines() -> list[bytes]:
    """12,000 good records, then at known lines: two that are not JSON, one invalid record,
    one repeated id; a blank line is skipped but counted in the numbering."""
    lines = [json.dumps(_record(n)).encode() for n in range(RECORDS)]
    lines[10] = b'{"id": "broken", '  # line 11
    lines[7000] = b"not json at all"  # line 7001
    lines[9000] = json.dumps(_record(9000, input_tokens=-5)).encode()  # line 9001
    lines[11000] = json.dumps(_record(3)).encode()  # line 11001: id call-3 again
    lines[500] = b"   "  # line 501: blank
    return lines


def test_streamed_import_progress_verdicts_and_retry(
    postgres: PostgresCluster,
    database_url: str,
    redis_server: RedisServer,
    start_apex: Callable[..., ApexServer],
) -> None:
    server = start_apex(database_url, redis_server.url)
    database = database_name(database_url)
    with server.client() as client:
        headers = bearer(signup(client))
    lines = _lines()
    body = gzip.compress(b"\n".join(lines) + b"\n")
    half = len(body) // 2
    gate = threading.Event()

    def slow_upload() -> Iterator[bytes]:
        """The first half, then nothing until the test has seen the progress."""
        for start in range(0, half, 4096):
            yield body[start : min(start + 4096, half)]
        assert gate.wait(60)
        yield body[half:]

    answer: dict[str, Any] = {}

    def upload() -> None:
        with httpx.Client(base_url=server.base_url, timeout=120) as http:
            response = http.post(IMPORT, headers={**headers, **NDJSON, "Content-Encoding": "gzip"},
                                 content=slow_upload())  # fmt: skip
            answer["status"], answer["body"] = response.status_code, response.json()

    uploader = threading.Thread(target=upload)
    uploader.start()
    try:
        with server.client() as client:

            def running_import() -> dict[str, Any] | None:
                listed = client.get("/api/v1/usage/imports", headers=headers).json()
                if not listed or listed[0]["accepted"] == 0:
                    return None
                one: dict[str, Any] = client.get(
                    f"/api/v1/usage/imports/{listed[0]['id']}", headers=headers
                ).json()
                assert one["id"] == listed[0]["id"]
                return one

            assert wait_until(lambda: running_import() is not None, 60)
            progress = running_import()
            assert progress is not None
            # The first chunk (5,000 lines) committed with its counts, the upload still open.
            assert progress["status"] == "running"
            assert progress["lines"] == 5_000  # non-blank lines: lines 1-5,001 but 501
            assert (progress["accepted"], progress["rejected"]) == (4_999, 1)
            assert _sum_and_count(postgres, database)[0] == 4_999
    finally:
        gate.set()
        uploader.join(120)
    assert answer["status"] == 200, answer
    done = answer["body"]
    stored = RECORDS - 1 - 3 - 1  # blank line, 3 rejected, 1 repeated id
    assert done["status"] == "succeeded"
    assert (done["lines"], done["accepted"], done["duplicates"], done["rejected"]) == (
        RECORDS - 1, stored, 1, 3,
    )  # fmt: skip
    assert _sum_and_count(postgres, database) == (stored, stored * GPT4O_CALL_NANOS)
    with server.client() as client:
        problems = client.get(done["problems_url"], headers=headers)
        again = client.post(IMPORT, headers={**headers, **NDJSON}, content=b"\n".join(lines))
    verdicts = [json.loads(line) for line in problems.text.splitlines()]
    assert [(v["line"], v["status"], v["errors"][0]["field"]) for v in verdicts] == [
        (11, "rejected", "line"), (7001, "rejected", "line"), (9001, "rejected", "input_tokens"),
    ]  # fmt: skip
    assert verdicts[2]["id"] == "call-9000"
    # The same file again, uncompressed: nothing new, every record a duplicate.
    assert again.status_code == 200, again.text
    assert (again.json()["accepted"], again.json()["duplicates"]) == (0, stored + 1)
    assert _sum_and_count(postgres, database)[0] == stored


def test_broken_upload_keeps_committed_chunks_and_apex_ingest_url_finishes_it(
    postgres: PostgresCluster,
    database_url: str,
    redis_server: RedisServer,
    start_apex: Callable[..., ApexServer],
    tmp_path: Path,
) -> None:
    server = start_apex(database_url, redis_server.url)
    database = database_name(database_url)
    with server.client() as client:
        headers = bearer(signup(client))
        scopes = {"name": "import", "permissions": ["usage:write", "usage:read"]}
        key = client.post("/api/v1/organizations/current/api-keys", headers=headers, json=scopes)
        assert key.status_code == 201, key.text
        wrong = client.post(IMPORT, headers={**headers, "Content-Type": "application/json"},
                            content=b"{}")  # fmt: skip
        assert wrong.status_code == 415
        garbage = client.post(IMPORT, headers={**headers, **NDJSON, "Content-Encoding": "gzip"},
                              content=b"\x1f\x8b not gzip")  # fmt: skip
        assert garbage.status_code == 400, garbage.text
    lines = [json.dumps(_record(n)).encode() + b"\n" for n in range(RECORDS)]
    body = b"".join(lines)
    cut = len(b"".join(lines[:7_000]))

    def broken() -> Iterator[bytes]:
        yield body[:cut]
        wait_until(lambda: _sum_and_count(postgres, database)[0] == 5_000, 60)
        raise ConnectionResetError("the client went away")

    try:
        with httpx.Client(base_url=server.base_url, timeout=60) as http:
            http.post(IMPORT, headers={**headers, **NDJSON}, content=broken())
    except (httpx.HTTPError, ConnectionResetError):
        pass
    # The garbage upload above failed too: wait for this import's own failure.
    assert wait_until(
        lambda: (
            "broke off"
            in postgres.sql("SELECT error FROM usage_imports WHERE status = 'failed'", database)
        ),
        30,
    )
    assert _sum_and_count(postgres, database)[0] == 5_000  # the committed chunk, no more

    path = tmp_path / "usage.jsonl"
    path.write_bytes(body)
    env = {k: v for k, v in os.environ.items() if not k.startswith("APEX_")}
    env["APEX_API_KEY"] = key.json()["key"]
    done = subprocess.run(
        [sys.executable, "-m", "apex", "ingest", str(path), "--url", server.base_url],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "7,000 accepted" in done.stderr, done.stderr
    assert "5,000 duplicates" in done.stderr, done.stderr
    assert key.json()["key"] not in done.stderr + done.stdout
    assert _sum_and_count(postgres, database) == (RECORDS, RECORDS * GPT4O_CALL_NANOS)
