"""Agent runs per day, by plan: counted on the injectable clock's UTC day, in-process on the
embedded default (SQLite, runs executed by the in-process job queue)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from apex.kit.clock import FrozenClock
from tests.integration.conftest import in_process_app
from tests.integration.critical.conftest import bearer, signup_async

RUNS = "/api/v1/agents/runs"
QUESTION = {"question": "Where are we wasting money?"}


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(datetime(2026, 11, 25, 23, 59, 0, tzinfo=UTC))


@pytest.fixture
async def app(tmp_path: Path, clock: FrozenClock) -> AsyncIterator[FastAPI]:
    # Polling a run's status is many requests: the hourly API limit is not under test here.
    async with in_process_app(tmp_path, clock, enforce_api_limits=False) as application:
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://apex.test") as http:
        http.headers.update(bearer(await signup_async(http)))
        yield http


async def _finished(client: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    for _ in range(300):
        run: dict[str, Any] = (await client.get(f"{RUNS}/{run_id}")).json()
        if run["status"] in ("succeeded", "failed", "cancelled"):
            return run
        await asyncio.sleep(0.1)
    raise AssertionError(f"run {run_id} did not finish: {run}")


async def test_free_plan_starts_three_runs_a_utc_day(
    client: httpx.AsyncClient, clock: FrozenClock
) -> None:
    # Free: 3 runs a day, 1 at a time. Each run finishes before the next starts.
    for _ in range(3):
        started = await client.post(RUNS, json=QUESTION)
        assert started.status_code == 202, started.text
        assert (await _finished(client, started.json()["id"]))["status"] == "succeeded"

    refused = await client.post(RUNS, json=QUESTION)
    assert refused.status_code == 429, refused.text
    body = refused.json()
    assert (body["error"], body["limit"], body["upgrade"]) == ("RateLimited", 3, "early")
    assert "3 agent runs a day" in body["detail"]
    assert refused.headers["Retry-After"] == "60"  # seconds to 00:00 UTC on the clock
    listed = (await client.get(RUNS)).json()
    assert len(listed) == 3  # the refused run left nothing behind

    clock.advance(60)  # a new UTC day
    again = await client.post(RUNS, json=QUESTION)
    assert again.status_code == 202, again.text
    assert (await _finished(client, again.json()["id"]))["status"] == "succeeded"
