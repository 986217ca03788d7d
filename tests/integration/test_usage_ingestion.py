"""Usage ingestion through the REST API and `apex ingest`, against real PostgreSQL."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import text

from apex.kit.db import Database
from apex.migrations import runner
from apex.settings import Settings
from apex.usage.files import FileFormatError, checkpoint_path, ingest_file
from apex.usage.schemas import MAX_BATCH
from tests.harness import ApexServer, PostgresCluster, RedisServer
from tests.harness.procs import ManagedProcess, wait_until
from tests.integration.conftest import SharedMail, insert_organization, with_database
from tests.integration.critical.conftest import bearer, database_name, signup

# gpt-4o: $2.50 input, $1.25 cached input, $10.00 output per million tokens (pricing.json).
# 1,000 input + 2,000 cached + 100 output + 50 reasoning tokens
#   = 0.0025 + 0.0025 + 0.0015 = $0.0065 = 6,500,000 nano-dollars.
GPT4O_CALL_NANOS = 6_500_000
NOW = datetime(2026, 11, 27, 12, tzinfo=UTC)


def _record(n: int, **overrides: Any) -> dict[str, Any]:
    return {
        "id": f"call-{n}",
        "timestamp": "2026-11-01T12:00:00Z",
        "provider": "openai",
        "model": "gpt-4o-2024-08-06",
        "workload": "support",
        "input_tokens": 1000,
        "cached_input_tokens": 2000,
        "output_tokens": 100,
        "reasoning_tokens": 50,
        **overrides,
    }


# Records stored and their cost, and what the rollups say of them: one statement, so one
# snapshot even while batches commit.
STORED_AND_ROLLED_UP = (
    "SELECT count(*), coalesce(sum(cost_nanos), 0), "
    "(SELECT coalesce(sum(calls), 0) FROM usage_rollups), "
    "(SELECT coalesce(sum(cost_nanos), 0) FROM usage_rollups) FROM usage_records"
)


def _sum_and_count(postgres: PostgresCluster, database: str) -> tuple[int, int]:
    """Records stored and their cost; the rollups must say the same (same transaction)."""
    both = postgres.sql(STORED_AND_ROLLED_UP, database)
    count, total, rolled_count, rolled_total = both.strip().split("|")
    assert (rolled_count, rolled_total) == (count, total), "the rollups differ from the records"
    return int(count), int(total)


def test_rest_batches_are_idempotent_and_keep_good_records(
    postgres: PostgresCluster,
    database_url: str,
    redis_server: RedisServer,
    start_apex: Callable[..., ApexServer],
) -> None:
    server = start_apex(database_url, redis_server.url)
    database = database_name(database_url)
    with server.client() as client:
        headers = bearer(signup(client))
        batch: list[Any] = [_record(n) for n in range(10)]
        batch.insert(3, _record(99, timestamp="2026-11-01T12:00:00"))  # no time zone
        batch.insert(5, _record(98, input_tokens=-5, status="maybe"))  # two problems
        batch.insert(6, _record(96, prefix_tokens=5000, prefix_hash="p1"))  # longer than prompt
        batch.insert(7, _record(97, provider="acme", model="secret-model"))  # unpriced: kept
        batch.insert(8, _record(95, input_tokens=True, output_tokens="123"))  # not counts
        batch.insert(9, 1)  # not an object: rejected alone
        batch.insert(10, _record(94, metadata={"team": "search", "trace": [1, 2]}))
        batch.append(_record(0))  # the same id again in the same batch
        first = client.post("/api/v1/usage/events", headers=headers, json={"records": batch})
        assert first.status_code == 200, first.text
        report = first.json()
        assert (report["accepted"], report["duplicates"], report["rejected"]) == (12, 1, 5)
        assert len(report["results"]) == len(batch)
        problems = {r["index"]: r["errors"] for r in report["results"] if r["status"] == "rejected"}
        by_id = {r["id"]: r for r in report["results"] if r["id"]}
        assert [e["field"] for e in by_id["call-99"]["errors"]] == ["timestamp"]
        assert {e["field"] for e in by_id["call-98"]["errors"]} == {"input_tokens", "status"}
        assert by_id["call-96"]["errors"] == [
            {"field": "record", "reason": "prefix_tokens (5000) exceeds the prompt's tokens (3000)"}
        ]
        assert {e["field"] for e in by_id["call-95"]["errors"]} == {"input_tokens", "output_tokens"}
        assert problems[9] == [{"field": "record", "reason": "must be a JSON object"}]
        assert by_id["call-97"]["status"] == "accepted"
        assert by_id["call-97"]["warnings"][0]["field"] == "model"
        assert "stored unpriced" in by_id["call-97"]["warnings"][0]["reason"]
        # The unpriced record is stored at cost 0, marked so, until it has a price.
        assert _sum_and_count(postgres, database) == (12, 11 * GPT4O_CALL_NANOS)
        assert (
            postgres.sql(
                "SELECT cost_source FROM usage_records WHERE record_id = 'call-97'", database
            ).strip()
            == "unpriced"
        )
        # Metadata is stored and returned as sent.
        stored = client.get("/api/v1/usage/events/call-94", headers=headers)
        assert stored.status_code == 200, stored.text
        assert stored.json()["metadata"] == {"team": "search", "trace": [1, 2]}
        assert stored.json()["cost_usd"] == "0.0065"
        assert client.get("/api/v1/usage/events/nope", headers=headers).status_code == 404

        # The client retries the whole batch (it never saw the answer): nothing is counted twice.
        again = client.post("/api/v1/usage/events", headers=headers, json={"records": batch})
        assert (again.json()["accepted"], again.json()["duplicates"]) == (0, 13)
        assert _sum_and_count(postgres, database) == (12, 11 * GPT4O_CALL_NANOS)

        # What a client sends back is echoed short and always encodable.
        odd = [_record(0, id="x" * 5000), {**_record(0), "id": "bad-\ud800-id"}]
        echoed = client.post(
            "/api/v1/usage/events",
            headers={**headers, "Content-Type": "application/json"},
            content=json.dumps({"records": odd}),  # escapes the lone surrogate as JSON allows
        )
        assert echoed.status_code == 200, echoed.text
        long_id, surrogate = echoed.json()["results"]
        assert long_id["status"] == surrogate["status"] == "rejected"
        assert len(long_id["id"]) <= 201
        assert surrogate["id"] == "bad-\ufffd-id"

        # A reported cost is kept as sent; a negotiated price applies to later records.
        priced = client.put(
            "/api/v1/pricing/acme/secret-model",
            headers=headers,
            json={"input": "1.00", "output": "3.00"},
        )
        assert priced.status_code == 200, priced.text
        more = [
            _record(200, provider="acme", model="secret-model", cached_input_tokens=0),
            _record(201, cost_usd="0.123456789"),
        ]
        added = client.post("/api/v1/usage/events", headers=headers, json={"records": more})
        assert added.json()["accepted"] == 2
        # acme at $1 in / $3 out: 1,000 in + 150 out(incl. reasoning) = 0.001 + 0.00045.
        costs = postgres.sql(
            "SELECT record_id, cost_nanos, cost_source FROM usage_records "
            "WHERE record_id IN ('call-200', 'call-201') ORDER BY record_id",
            database,
        ).splitlines()
        assert costs == ["call-200|1450000|catalogue", "call-201|123456789|reported"]

        # A cached price above the input price is refused, naming the field.
        dearer = client.put(
            "/api/v1/pricing/acme/odd",
            headers=headers,
            json={"input": "1.00", "cached_input": "2.00", "output": "3.00"},
        )
        assert dearer.status_code == 422
        assert "cached_input must not cost more than input" in dearer.text

        # Oversized batches and bodies without records are refused as a whole, naming the field.
        too_many = client.post(
            "/api/v1/usage/events",
            headers=headers,
            json={"records": [_record(n) for n in range(MAX_BATCH + 1)]},
        )
        assert too_many.status_code == 422
        assert "records" in json.dumps(too_many.json())
        # A viewer key without usage:write cannot write.
        key = client.post(
            "/api/v1/organizations/current/api-keys",
            headers=headers,
            json={"name": "ro", "permissions": ["usage:read"]},
        ).json()["key"]
        refused = client.post(
            "/api/v1/usage/events",
            headers={"Authorization": f"Bearer {key}"},
            json={"records": [_record(500)]},
        )
        assert refused.status_code == 403
    assert _sum_and_count(postgres, database)[0] == 14


def test_fine_tunes_are_priced_at_their_base_models_fine_tuned_rates(
    postgres: PostgresCluster,
    database_url: str,
    redis_server: RedisServer,
    start_apex: Callable[..., ApexServer],
) -> None:
    server = start_apex(database_url, redis_server.url)
    database = database_name(database_url)
    tuned = {"provider": "openai", "cached_input_tokens": 0, "reasoning_tokens": 0}
    with server.client() as client:
        headers = bearer(signup(client))
        batch = [
            # A fine-tune of gpt-4o-mini: $0.30 in, $1.20 out per million tokens (OpenAI's
            # fine-tuned rates; the base model costs half): 1,000 x 0.30 + 100 x 1.20
            # = 0.0003 + 0.00012 = $0.00042.
            _record(1, model="ft:gpt-4o-mini-2024-07-18:acme:support-bot:9xYzAbC1", **tuned),
            # A fine-tune of a model with no published fine-tuned rate: kept, unpriced.
            _record(2, model="ft:davinci-002:acme::B2c3", **tuned),
        ]
        answer = client.post("/api/v1/usage/events", headers=headers, json={"records": batch})
        assert answer.status_code == 200, answer.text
        first, second = answer.json()["results"]
        assert (first["status"], first["warnings"]) == ("accepted", [])
        assert second["status"] == "accepted"
        (warning,) = second["warnings"]
        assert (
            "PUT /api/v1/pricing/openai/ft:davinci-002, for all its fine-tunes"
            in (warning["reason"])
        )
        # One negotiated price for the base covers every fine-tune of it:
        # 1,000 x $2.00 + 100 x $4.00 per million = 0.002 + 0.0004 = $0.0024.
        priced = client.put(
            "/api/v1/pricing/openai/ft:davinci-002",
            headers=headers,
            json={"input": "2.00", "output": "4.00"},
        )
        assert priced.status_code == 200, priced.text
        assert priced.json()["fine_tuned"] is True
        later = _record(3, model="ft:davinci-002:acme:other-job:Q9", **tuned)
        again = client.post("/api/v1/usage/events", headers=headers, json={"records": [later]})
        assert again.json()["results"][0]["warnings"] == []
    costs = postgres.sql(
        "SELECT record_id, cost_nanos, cost_source FROM usage_records ORDER BY record_id",
        database,
    ).splitlines()
    assert costs == [
        "call-1|420000|catalogue",
        "call-2|0|unpriced",
        "call-3|2400000|catalogue",
    ]


def test_cli_ingest_resumes_after_kill_and_counts_each_record_once(
    postgres: PostgresCluster,
    database_url: str,
    redis_server: RedisServer,
    start_apex: Callable[..., ApexServer],
    tmp_path: Path,
) -> None:
    server = start_apex(database_url, redis_server.url)
    database = database_name(database_url)
    with server.client() as client:
        assert signup(client, organization_name="Ingest Co").status_code == 201
    slug = postgres.sql("SELECT slug FROM organizations", database).strip()
    lines = 20_000
    path = tmp_path / "usage.jsonl"
    with path.open("w") as handle:
        for n in range(lines):
            handle.write(json.dumps(_record(n)) + "\n")
        handle.write("\n")  # blank lines are skipped
    env = {k: v for k, v in os.environ.items() if not k.startswith("APEX_")}
    env["APEX_DATABASE_URL"] = database_url
    command = [
        sys.executable,
        "-m",
        "apex",
        "ingest",
        str(path),
        "--org",
        slug,
        "--batch-size",
        "200",
    ]

    # Kill -9 once some batches have committed.
    interrupted = ManagedProcess(command, log_path=tmp_path / "first.log", cwd=tmp_path, env=env)
    checkpoint = tmp_path / "usage.jsonl.apex-ingest.json"
    assert wait_until(lambda: checkpoint.exists(), timeout=60)
    interrupted.kill()
    stored_before = _sum_and_count(postgres, database)[0]
    assert 0 < stored_before < lines

    started = time.monotonic()
    resumed = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "Resumed after line" in resumed.stderr
    assert _sum_and_count(postgres, database) == (lines, lines * GPT4O_CALL_NANOS)
    print(
        f"\ningest: killed after {stored_before} records; resumed and finished "
        f"{lines - stored_before} more in {time.monotonic() - started:.1f}s"
    )

    # Running it again on the finished file says what the store has, and sends nothing.
    replay = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert replay.returncode == 0, replay.stderr
    said = " ".join((replay.stdout + replay.stderr).split())
    assert f"{lines:,} records, all already stored" in said
    # --restart sends it again: every record is reported as a duplicate, nothing changes.
    restart = subprocess.run(
        [*command, "--restart"], env=env, capture_output=True, text=True, timeout=300
    )
    assert restart.returncode == 0
    assert f"0 accepted, {lines:,} duplicates" in " ".join(restart.stderr.split())
    assert _sum_and_count(postgres, database) == (lines, lines * GPT4O_CALL_NANOS)

    # A malformed line stops the import with its line number; records before it are kept.
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "id,timestamp,provider,model,input_tokens,output_tokens\n"
        "csv-1,2026-11-02T00:00:00Z,openai,gpt-4o,1000,100\n"
        "csv-2,2026-11-02T00:00:00Z,openai\n"
    )
    failed = subprocess.run(
        [sys.executable, "-m", "apex", "ingest", str(bad), "--org", slug],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert failed.returncode == 1
    assert "line 3" in failed.stderr


def test_cli_ingest_killed_inside_a_batch_loses_and_doubles_nothing(
    postgres: PostgresCluster,
    database_url: str,
    redis_server: RedisServer,
    start_apex: Callable[..., ApexServer],
    tmp_path: Path,
) -> None:
    """Killed (SIGKILL, by failpoints) inside a batch's transaction, then right after a
    batch committed but before its checkpoint: the finished run has every record once."""
    server = start_apex(database_url, redis_server.url)
    database = database_name(database_url)
    with server.client() as client:
        assert signup(client, organization_name="Crash Co").status_code == 201
    slug = postgres.sql("SELECT slug FROM organizations", database).strip()
    lines, batch = 1_000, 100
    path = tmp_path / "usage.csv"
    with path.open("w") as handle:
        handle.write("id,timestamp,provider,model,workload,input_tokens,cached_input_tokens,"
                     "output_tokens,reasoning_tokens\n")  # fmt: skip
        for n in range(lines):
            handle.write(f"csv-{n},2026-11-01T12:00:00Z,openai,gpt-4o,support,1000,2000,100,50\n")
    base = {k: v for k, v in os.environ.items() if not k.startswith("APEX_")}
    base["APEX_DATABASE_URL"] = database_url
    command = [sys.executable, "-m", "apex", "ingest", str(path), "--org", slug,
               "--batch-size", str(batch)]  # fmt: skip

    def ingest(failpoint: str | None) -> subprocess.CompletedProcess[str]:
        env = base | ({"APEX_FAILPOINTS": failpoint} if failpoint else {})
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)

    # Killed with the first batch inserted, its transaction not committed: nothing stored.
    killed = ingest("ingest.kill_before_commit:1")
    assert killed.returncode == -9
    assert _sum_and_count(postgres, database) == (0, 0)
    assert not checkpoint_path(path).exists()
    killed = ingest("ingest.kill_after_commit:1")
    assert killed.returncode == -9
    # The first batch committed; the process died before writing the checkpoint.
    assert _sum_and_count(postgres, database) == (batch, batch * GPT4O_CALL_NANOS)
    finished = ingest(None)
    assert finished.returncode == 0, finished.stderr
    # It started from the top again: the committed batch comes back as duplicates.
    assert f"{lines - batch:,} accepted, {batch} duplicates" in " ".join(finished.stderr.split())
    assert _sum_and_count(postgres, database) == (lines, lines * GPT4O_CALL_NANOS)


def test_concurrent_overlapping_batches_store_each_record_once(
    postgres: PostgresCluster,
    database_url: str,
    redis_server: RedisServer,
    start_apex: Callable[..., ApexServer],
) -> None:
    """Two instances take two batches of the largest size at once, sharing half their ids:
    every record is stored once, the shared half is accepted by exactly one of them, and
    what the bulk path wrote is what was sent (costs, metadata in any script)."""
    servers = [start_apex(database_url, redis_server.url) for _ in range(2)]
    database = database_name(database_url)
    with servers[0].client() as client:
        headers = bearer(signup(client))
    half = MAX_BATCH // 2
    note = {"team": "søk", "tags": ["检索", "émoji 🙂"], "n": 1.5}
    batches = [
        [_record(n, metadata=note if n % 1000 == 0 else None) for n in range(0, MAX_BATCH)],
        [_record(n) for n in range(half, half + MAX_BATCH)],
    ]
    reports: list[dict[str, Any]] = [{}, {}]

    def send(i: int) -> None:
        with servers[i].client(timeout=120) as http:
            answer = http.post("/api/v1/usage/events", headers=headers,
                               json={"records": batches[i]})  # fmt: skip
            assert answer.status_code == 200, answer.text
            reports[i] = answer.json()

    threads = [threading.Thread(target=send, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    union = MAX_BATCH + half
    assert sum(r["accepted"] for r in reports) == union
    assert sum(r["duplicates"] for r in reports) == MAX_BATCH - half
    assert _sum_and_count(postgres, database) == (union, union * GPT4O_CALL_NANOS)
    with servers[1].client() as http:
        stored = http.get("/api/v1/usage/events/call-3000", headers=headers).json()
    assert stored["metadata"] == note
    assert stored["cost_usd"] == "0.0065"


def test_duplicates_use_no_monthly_quota_on_postgresql(
    database_url: str,
    redis_server: RedisServer,
    start_apex: Callable[..., ApexServer],
) -> None:
    """With 5 records of the month's quota left, a batch of 10 stored records and 10 new
    ones stores 5 new, rejects 5 naming the quota, and reports the 10 as duplicates: the
    stored ones are found (PostgreSQL's array lookup) before any quota is taken."""
    server = start_apex(database_url, redis_server.url)
    with server.client() as client:
        signed_up = signup(client)
        headers = bearer(signed_up)
        first = client.post("/api/v1/usage/events", headers=headers,
                            json={"records": [_record(n) for n in range(10)]})  # fmt: skip
        assert first.json()["accepted"] == 10
        period = datetime.now(UTC).strftime("%Y-%m")  # the server's month (same clock)
        key = f"apex:quota:records:{signed_up.json()['organization_id']}:{period}"
        store = redis.Redis.from_url(redis_server.url)
        try:
            store.set(key, 100_000 - 5, ex=3600)  # Free: 100,000 a month
        finally:
            store.close()
        mixed = [_record(n) for n in range(20)]
        report = client.post("/api/v1/usage/events", headers=headers,
                             json={"records": mixed}).json()  # fmt: skip
    assert (report["accepted"], report["duplicates"], report["rejected"]) == (5, 10, 5)
    verdicts = [r["status"] for r in report["results"]]
    assert verdicts == ["duplicate"] * 10 + ["accepted"] * 5 + ["rejected"] * 5


def test_owners_are_warned_once_at_80_and_100_percent_of_the_records_quota(
    database_url: str,
    redis_server: RedisServer,
    start_apex: Callable[..., ApexServer],
) -> None:
    """Free: 100,000 records a month. The batch that takes the month's count to 80% mails
    the owner once, the one that reaches 100% once more; later batches, on another instance
    too, mail nothing more."""
    servers = [start_apex(database_url, redis_server.url) for _ in range(2)]
    mail = SharedMail.get()
    with servers[0].client() as client:
        signed_up = signup(client)
        headers = bearer(signed_up)
        owner = client.get("/api/v1/users/me", headers=headers).json()["email"]
    seen = mail.keys()
    key = f"apex:quota:records:{signed_up.json()['organization_id']}:{datetime.now(UTC):%Y-%m}"
    store = redis.Redis.from_url(redis_server.url)

    def send(server: ApexServer, first: int, used_before: int | None = None) -> int:
        if used_before is not None:
            store.set(key, used_before, ex=3600)
        with server.client() as http:
            batch = [_record(n) for n in range(first, first + 10)]
            answer = http.post("/api/v1/usage/events", headers=headers, json={"records": batch})
        accepted: int = answer.json()["accepted"]
        return accepted

    try:
        assert send(servers[0], 0, used_before=79_995) == 10  # 79,995 → 80,005
        assert send(servers[1], 10) == 10
        assert send(servers[1], 20, used_before=99_995) == 5  # 100,000: the rest refused
        assert send(servers[0], 30) == 0
    finally:
        store.close()

    def subjects() -> list[str]:
        return sorted(str(m["Subject"]) for _, m in mail.mails_since(seen) if m["To"] == owner)

    # Each instance mails in the background after its commit, so the two may arrive in
    # either order and not at once (a process's first mail also connects to the server).
    assert wait_until(lambda: len(subjects()) >= 2, timeout=30), subjects()
    time.sleep(1)  # anything more would have been sent by now
    assert subjects() == [
        "Apex: 100% of this month's usage records used",
        "Apex: 80% of this month's usage records used",
    ]


def test_meter_reads_a_month_from_the_rollups(
    database_url: str,
    redis_server: RedisServer,
    start_apex: Callable[..., ApexServer],
) -> None:
    """The meter counts the records, tokens and cost of one UTC month, to the nano-dollar,
    whatever batches they came in; the month before and after are not in it."""
    server = start_apex(database_url, redis_server.url)
    months = {"2026-09-30T23:59:59Z": 3, "2026-10-01T00:00:00Z": 40, "2026-10-31T23:30:00Z": 7,
              "2026-11-01T00:00:00Z": 5}  # fmt: skip
    sent = [
        _record(n, id=f"m-{at}-{n}", timestamp=at, cost_usd=f"0.00{n:04d}")
        for at, count in months.items()
        for n in range(count)
    ]
    october = [r for r in sent if r["timestamp"].startswith("2026-10")]
    with server.client() as client:
        headers = bearer(signup(client))
        for start in range(0, len(sent), 13):  # uneven batches, one retried
            batch = {"records": sent[start : start + 13]}
            assert client.post("/api/v1/usage/events", headers=headers, json=batch).is_success
        client.post("/api/v1/usage/events", headers=headers, json={"records": sent[:13]})
        meter = client.get("/api/v1/usage/meter", headers=headers, params={"period": "2026-10"})
        bad = client.get("/api/v1/usage/meter", headers=headers, params={"period": "2026-13"})
        edges = [client.get("/api/v1/usage/meter", headers=headers, params={"period": p})
                 for p in ("0000-07", "9999-12")]  # fmt: skip
    assert meter.status_code == 200, meter.text
    body = meter.json()
    assert body["records"] == 47 == len(october)
    assert body["tokens"] == {"input": 47 * 1000, "cached_input": 47 * 2000, "cache_write": 0,
                              "output": 47 * 100, "reasoning": 47 * 50}  # fmt: skip
    expected = sum(Decimal(r["cost_usd"]) for r in october)
    assert Decimal(body["cost_usd"]) == expected
    assert (body["start"], body["end"]) == ("2026-10-01T00:00:00Z", "2026-11-01T00:00:00Z")
    assert (body["tier"], body["records_included"]) == ("free", 100_000)
    assert bad.status_code == 422
    assert "period" in bad.text
    assert [(e.status_code, "period" in e.text) for e in edges] == [(422, True), (422, True)]


def test_a_bad_line_stops_the_file_after_every_batch_before_it_is_stored(
    empty_database: str, tmp_path: Path
) -> None:
    """`ingest_file` reads the next batch while the previous one is being stored (in a
    thread, on PostgreSQL): a line that is not JSON in the third batch still leaves the
    first two stored and checkpointed, and each verdict names its own line."""
    config = Settings(database_url=empty_database, environment="test")
    runner.upgrade(config)
    path = tmp_path / "usage.jsonl"
    lines = [json.dumps(_record(n)) for n in range(300)]
    lines[149] = json.dumps(_record(149, input_tokens=-1))  # line 150: rejected, named
    lines[250] = '{"id": "call-250", '  # line 251: not JSON, in the third batch of 100
    path.write_text("\n".join(lines) + "\n")

    async def scenario(db: Database) -> None:
        organization_id = await insert_organization(db, "Files", "mid", NOW)
        with pytest.raises(FileFormatError, match="line 251"):
            await ingest_file(db, organization_id, path, batch_size=100)
        assert await _stored(db) == (199, 199 * GPT4O_CALL_NANOS)
        assert json.loads(checkpoint_path(path).read_text())["lines"] == 200

        lines[250] = json.dumps(_record(250))
        path.write_text("\n".join(lines) + "\n")  # a changed file starts from its top
        result = await ingest_file(db, organization_id, path, batch_size=100)
        assert (result.accepted, result.duplicates, result.rejected) == (100, 199, 1)
        assert [(line, problem.errors[0].field) for line, problem in result.problems] == [
            (150, "input_tokens")
        ]
        assert await _stored(db) == (299, 299 * GPT4O_CALL_NANOS)

    with_database(config, scenario)


async def _stored(db: Database) -> tuple[int, int]:
    """Records stored and their cost, checked against the rollups (same transaction)."""
    async with db.unit_of_work() as session:
        count, total, rolled_count, rolled_total = (
            await session.execute(text(STORED_AND_ROLLED_UP))
        ).one()
    assert (rolled_count, rolled_total) == (count, total), "the rollups differ from the records"
    return int(count), int(total)


def test_apex_ingest_starts_without_the_web_framework_redis_or_an_http_client(
    tmp_path: Path,
) -> None:
    """What `apex ingest` loads into the embedded store: a command that touches neither
    HTTP nor Redis does not pay for importing their libraries at every start."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("APEX_")}
    env["APEX_DATA_DIR"] = str(tmp_path / "data")
    apex = [sys.executable, "-m", "apex"]
    migrated = subprocess.run([*apex, "migrate", "upgrade"], env=env, capture_output=True,
                              text=True, timeout=120)  # fmt: skip
    assert migrated.returncode == 0, migrated.stderr
    with sqlite3.connect(tmp_path / "data" / "apex.db") as connection:
        connection.execute(
            "INSERT INTO organizations (id, name, slug, tier, created_at, updated_at) VALUES "
            "(?, 'Lean', 'lean', 'mid', '2026-11-01 00:00:00', '2026-11-01 00:00:00')",
            (uuid.uuid4().hex,),
        )
    path = tmp_path / "usage.jsonl"
    path.write_text(json.dumps(_record(1)) + "\n")
    done = subprocess.run(
        [*apex, "ingest", str(path), "--org", "lean"],
        env=env | {"PYTHONPROFILEIMPORTTIME": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "1 accepted" in done.stderr
    imported = [line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines()
                if line.startswith("import time:") and "|" in line]  # fmt: skip
    assert "apex.usage.files" in imported  # the list is the command's imports
    packages = {name.split(".")[0] for name in imported}
    assert packages & {"fastapi", "starlette", "redis", "httpx"} == set()


def test_a_record_id_postgresql_cannot_store_is_refused_naming_the_field(
    database_url: str, redis_server: RedisServer, start_apex: Callable[..., ApexServer]
) -> None:
    """A NUL in the path's record id answers 422 naming `record_id`, not a 500 from the
    driver (PostgreSQL text cannot hold a NUL)."""
    server = start_apex(database_url, redis_server.url)
    with server.client() as client:
        headers = bearer(signup(client))
        answer = client.get("/api/v1/usage/events/a%00b", headers=headers)
        assert answer.status_code == 422, answer.text
        assert [e["field"] for e in answer.json()["errors"]] == ["record_id"]
        assert client.get("/api/v1/usage/events/ab", headers=headers).status_code == 404
