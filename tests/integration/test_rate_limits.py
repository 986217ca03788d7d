"""The rate limiter (kit/limits.py) as clients meet it: a plan's hourly API limit, exact
across instances, with RateLimit headers, reset on the hour; sign-in throttling that slows
guessing without locking the owner out."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from apex.kit.clock import FrozenClock
from tests.harness import ApexServer, RedisServer
from tests.integration.conftest import in_process_app
from tests.integration.critical.conftest import bearer, signup, signup_async, signup_body

ORG = "/api/v1/organizations/current"
TOKEN = "/api/v1/auth/token"
PASSWORD = signup_body()["password"]


def test_a_free_plan_gets_exactly_its_hourly_requests_across_instances(
    database_url: str, redis_server: RedisServer, start_apex: Callable[..., ApexServer]
) -> None:
    """4 clients x 250 requests over 2 instances, on Free's 100 an hour: exactly 100 pass."""
    limits = {"enforce_api_limits": "true"}
    servers = [start_apex(database_url, redis_server.url, **limits) for _ in range(2)]
    # Real processes keep real time: windows are whole hours, so start well inside one.
    into_hour = time.time() % 3600
    if into_hour > 3600 - 120:
        time.sleep(3600 - into_hour + 1)
    with servers[0].client() as client:
        headers = bearer(signup(client))
    statuses: Counter[int] = Counter()
    answers: list[httpx.Response] = []
    lock = threading.Lock()

    def hammer(index: int) -> None:
        with servers[index % 2].client() as client:
            for _ in range(250):
                answer = client.get(ORG, headers=headers)
                with lock:
                    statuses[answer.status_code] += 1
                    answers.append(answer)

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert statuses == {200: 100, 429: 900}
    allowed = [a for a in answers if a.status_code == 200]
    assert {a.headers["RateLimit-Policy"] for a in allowed} == {"100;w=3600"}
    remaining = sorted(int(a.headers["RateLimit"].split("remaining=")[1].split(",")[0])
                       for a in allowed)  # fmt: skip
    assert remaining == list(range(100))  # each allowed request saw its own count
    refused = next(a for a in answers if a.status_code == 429)
    body = refused.json()
    assert (body["error"], body["limit"], body["upgrade"]) == ("RateLimited", 100, "early")
    assert "Early plan allows more" in body["detail"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 3600
    assert "remaining=0" in refused.headers["RateLimit"]


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(datetime(2026, 11, 26, 9, 59, 0, tzinfo=UTC))


@pytest.fixture
async def app(tmp_path: Path, clock: FrozenClock) -> AsyncIterator[FastAPI]:
    async with in_process_app(tmp_path, clock) as application:
        yield application


async def test_the_hourly_limit_resets_on_the_hour(app: FastAPI, clock: FrozenClock) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://apex.test") as client:
        client.headers.update(bearer(await signup_async(client)))
        for _ in range(100):
            assert (await client.get(ORG)).status_code == 200
        refused = await client.get(ORG)
        assert refused.status_code == 429
        assert refused.headers["Retry-After"] == "60"  # 09:59 → 10:00 on the clock
        clock.advance(60)
        again = await client.get(ORG)
        assert again.status_code == 200
        assert again.headers["RateLimit"] == "limit=100, remaining=99, reset=3600"


@asynccontextmanager
async def _client_of(
    tmp_path: Path, clock: FrozenClock, **settings: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of an in-process app whose time is `clock`: the throttle's windows and
    delays move only when the test moves the clock, however slow the machine."""
    async with in_process_app(tmp_path, clock, **settings) as app:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://apex.test") as client:
            yield client


async def test_guessing_a_password_slows_down_and_never_locks_the_owner_out(
    tmp_path: Path, clock: FrozenClock
) -> None:
    settings = {"login_failures_before_delay": 5, "login_delay_cap_seconds": 2}
    async with _client_of(tmp_path, clock, **settings) as client:
        owner = await signup_async(client)
        email = (await client.get("/api/v1/users/me", headers=bearer(owner))).json()["email"]
        other_account = bearer(await signup_async(client))
        other = (await client.get("/api/v1/users/me", headers=other_account)).json()["email"]
        guesses: Counter[int] = Counter()
        for n in range(10):
            guess = {"email": email, "password": f"guess-{n}"}
            guesses[(await client.post(TOKEN, json=guess)).status_code] += 1
        # Five wrong answers, then a wait: the other five guesses were never checked.
        assert guesses == {401: 5, 429: 5}
        right = {"email": email, "password": PASSWORD}
        delayed = await client.post(TOKEN, json=right)
        assert delayed.status_code == 429
        wait = float(delayed.headers["Retry-After"])
        assert 1 <= wait <= 2  # capped: a delay, not a lockout
        # Another account from the same address is not slowed by this one's guesses.
        other_login = await client.post(TOKEN, json={"email": other, "password": PASSWORD})
        assert other_login.status_code == 200
        clock.advance(wait)
        assert (await client.post(TOKEN, json=right)).status_code == 200
        # A success clears the delay: the next wrong password is an ordinary 401.
        wrong = await client.post(TOKEN, json={"email": email, "password": "nope"})
        assert wrong.status_code == 401
        # An unknown account is answered the same way: no hint it does not exist.
        nobody = {"email": "nobody@example.test", "password": "x"}
        unknown = [await client.post(TOKEN, json=nobody) for _ in range(6)]
        assert [u.status_code for u in unknown] == [401] * 5 + [429]
        assert unknown[0].json()["detail"] == wrong.json()["detail"]


async def test_one_address_gets_a_bounded_number_of_attempts_a_minute(
    tmp_path: Path, clock: FrozenClock
) -> None:
    async with _client_of(tmp_path, clock, login_attempts_per_minute=10) as client:
        answers = [
            await client.post(TOKEN, json={"email": f"u{n}@example.test", "password": "x"})
            for n in range(12)
        ]
        assert [a.status_code for a in answers] == [401] * 10 + [429] * 2
        assert "from your address" in answers[-1].json()["detail"]
        clock.advance(60)  # the next minute's window
        after = await client.post(TOKEN, json={"email": "u0@example.test", "password": "x"})
        assert after.status_code == 401


def _records(prefix: str, count: int) -> list[dict[str, object]]:
    return [
        {"id": f"{prefix}-{n}", "timestamp": "2026-11-20T10:00:00Z", "provider": "openai",
         "model": "gpt-4o", "input_tokens": 100, "output_tokens": 10}
        for n in range(count)
    ]  # fmt: skip


async def test_records_past_the_monthly_quota_are_rejected_by_name(
    app: FastAPI, clock: FrozenClock
) -> None:
    """Free includes 100,000 records a month. With 99,990 of November's already counted,
    a batch of 20 new records stores 10 and rejects 10 naming the quota; duplicates and
    a new month cost nothing."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://apex.test") as client:
        account = signup_body()
        signed_up = (await signup_async(client, **account)).json()
        client.headers.update({"Authorization": f"Bearer {signed_up['access_token']}"})
        organization = signed_up["organization_id"]
        quota = app.state.quota
        await quota.take("records", organization, "2026-11", limit=100_000, wanted=99_990,
                         ttl_seconds=3600)  # fmt: skip
        answer = await client.post("/api/v1/usage/events", json={"records": _records("a", 20)})
        report = answer.json()
        assert (report["accepted"], report["rejected"]) == (10, 10)
        refused = [r for r in report["results"] if r["status"] == "rejected"]
        assert [r["id"] for r in refused] == [f"a-{n}" for n in range(10, 20)]
        assert refused[0]["errors"][0]["field"] == "records"
        assert (
            "quota of 100,000 records a month is used up for November 2026"
            in (refused[0]["errors"][0]["reason"])
        )
        assert "Early plan includes more" in refused[0]["errors"][0]["reason"]
        # Re-sending the stored ten costs nothing: duplicates give their units back.
        again = (await client.post("/api/v1/usage/events",
                                   json={"records": _records("a", 10)})).json()  # fmt: skip
        assert (again["duplicates"], again["rejected"]) == (10, 0)
        # December starts a new count.
        clock.advance(86_400 * 5)
        login = {"email": account["email"], "password": account["password"]}
        client.headers.update(bearer(await client.post(TOKEN, json=login)))
        december = (await client.post("/api/v1/usage/events",
                                      json={"records": _records("b", 5)})).json()  # fmt: skip
        assert december["accepted"] == 5
        stored = await client.get("/api/v1/usage/events/a-9")
        assert stored.status_code == 200
        assert (await client.get("/api/v1/usage/events/a-10")).status_code == 404


def test_limits_are_guard_rails_not_dependencies(
    fresh_redis: RedisServer, database_url: str, start_apex: Callable[..., ApexServer]
) -> None:
    """With Redis down, what works without Redis keeps working with the limits on: reads,
    sign-in (unthrottled) and ingestion (uncounted)."""
    server = start_apex(database_url, fresh_redis.url, enforce_api_limits="true")
    with server.client() as client:
        account = signup_body()
        headers = bearer(signup(client, **account))
        assert client.get(ORG, headers=headers).headers["RateLimit-Policy"] == "100;w=3600"
        fresh_redis.kill()
        read = client.get(ORG, headers=headers)
        assert read.status_code == 200, read.text
        assert "RateLimit" not in read.headers
        login = {"email": account["email"], "password": account["password"]}
        assert client.post(TOKEN, json=login).status_code == 200
        stored = client.post("/api/v1/usage/events", headers=headers,
                             json={"records": _records("down", 3)})  # fmt: skip
        assert stored.json()["accepted"] == 3, stored.text
    assert "api_limit_unavailable" in server.logs()
