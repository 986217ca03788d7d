"""The usage rollups always equal aggregates of the raw records.

Random batches of records (prompt and prefix repeats, retried ids inside and across
batches, unpriced models, reported costs, failed calls, calls without latency or user) go
through ingestion on PostgreSQL and on SQLite; some batches roll back after ingesting
(a crash before commit). Then what the analyses and the meter read from the rollups is
compared with the oracle in tests/unit/records.py, computed in plain Python from the calls
that were committed, over a random window of whole hours; and `rebuild` recomputes the same
rollups from the raw records.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from apex.kit.db import Database
from apex.migrations import runner
from apex.settings import Settings
from apex.usage import service
from apex.usage.pricing import default_catalogue
from apex.usage.rollups import MeterRepository, RollupRepository, SpendRepository
from apex.usage.spend import SpendData, Window
from tests.integration.conftest import insert_organization, with_database
from tests.unit.records import Call, aggregate, costed

START = datetime(2026, 10, 1, tzinfo=UTC)
CATALOGUE = default_catalogue()
HOURS = 8  # few hours, models and hashes: batches collide on every rollup row
MODELS = [("openai", "gpt-4o"), ("acme", "house-model-1")]


class Crash(Exception):
    """Raised inside a unit of work after ingesting: the batch must leave no trace."""


def record(call: Call) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": call.id,
        "timestamp": call.at.isoformat(),
        "provider": call.provider,
        "model": call.model,
        "workload": call.workload,
        "input_tokens": call.input,
        "cached_input_tokens": call.cached,
        "cache_write_tokens": call.written,
        "output_tokens": call.output,
        "reasoning_tokens": call.reasoning,
        "status": call.status,
        "latency_ms": call.latency_ms,
        "end_user": call.end_user,
        "prompt_hash": call.prompt_hash,
        "prefix_hash": call.prefix_hash,
        "prefix_tokens": call.prefix_tokens,
    }
    if call.cost_usd is not None:
        body["cost_usd"] = str(call.cost_usd)
    return body


@st.composite
def calls(draw: st.DrawFn) -> Call:
    provider, model = draw(st.sampled_from(MODELS))
    cached = draw(st.sampled_from([0, 0, 512]))
    prompt = draw(st.integers(0, 5000))
    prefix_hash = draw(st.one_of(st.none(), st.just("sys-v1")))
    return Call(
        id=f"c{draw(st.integers(0, 150))}",  # a small id space: retries are common
        at=START + timedelta(minutes=draw(st.integers(0, HOURS * 60 - 1))),
        provider=provider,
        model=model,
        workload=draw(st.sampled_from(["support", "nightly"])),
        input=prompt,
        cached=cached,
        written=draw(st.sampled_from([0, 0, 256])),
        output=draw(st.integers(0, 900)),
        reasoning=draw(st.sampled_from([0, 64])),
        status=draw(st.sampled_from(["ok", "ok", "error", "timeout"])),
        latency_ms=draw(st.one_of(st.none(), st.integers(1, 30_000))),
        end_user=draw(st.one_of(st.none(), st.sampled_from(["u1", "u2"]))),
        prompt_hash=draw(st.one_of(st.none(), st.sampled_from(["p1", "p2"]))),
        prefix_hash=prefix_hash,
        prefix_tokens=400 if prefix_hash and prompt >= 400 else 0,
        cost_usd=draw(st.one_of(st.none(), st.decimals(0, 2, places=6).map(Decimal))),
    )


batches = st.lists(
    st.tuples(st.lists(calls(), min_size=10, max_size=40), st.booleans()), min_size=2, max_size=6
)
windows = st.tuples(st.integers(0, HOURS - 1), st.integers(1, HOURS))


def assert_same(got: SpendData, want: SpendData) -> None:
    """Equal, with the cost fit's float sums equal to float rounding (summed in another order)."""
    assert got.groups == want.groups
    assert got.days == want.days
    assert got.hours == want.hours
    assert got.prefixes == want.prefixes
    assert got.duplicates == want.duplicates
    assert [(f.provider, f.model, f.calls) for f in got.fits] == [
        (f.provider, f.model, f.calls) for f in want.fits
    ]
    for mine, theirs in zip(got.fits, want.fits, strict=True):
        assert mine.sums.keys() == theirs.sums.keys()
        for key, value in theirs.sums.items():
            assert math.isclose(mine.sums[key], value, rel_tol=1e-9, abs_tol=1e-6), key


async def new_organization(db: Database) -> uuid.UUID:
    return await insert_organization(db, "Rollups", "mid", START)


async def ingest_batches(
    db: Database, org: uuid.UUID, drawn: list[tuple[list[Call], bool]]
) -> list[Call]:
    """Ingest each batch (rolling back those marked to crash); the calls committed."""
    committed: dict[str, Call] = {}
    for batch, crash in drawn:
        try:
            async with db.unit_of_work() as session:
                await service.ingest(session, org, [record(c) for c in batch], now=START)
                if crash:
                    raise Crash
        except Crash:
            continue
        for call in batch:  # the first call of an id wins; later ones are duplicates
            committed.setdefault(call.id, call)
    return list(committed.values())


def check(
    config: Settings, drawn: list[tuple[list[Call], bool]], window_hours: tuple[int, int]
) -> None:
    async def scenario(db: Database) -> None:
        org = await new_organization(db)
        other = await new_organization(db)  # another tenant's records never count
        await ingest_batches(
            db, other, [([replace(c, id=f"o-{c.id}") for c in drawn[0][0]], False)]
        )
        committed = await ingest_batches(db, org, drawn)
        first, span = window_hours
        window = Window(START + timedelta(hours=first), START + timedelta(hours=first + span))
        want = aggregate(committed, window)
        async with db.unit_of_work() as session:
            assert_same(await SpendRepository(session).fetch(org, window), want)
            meter = await MeterRepository(session).read(org, window)
        assert meter.records == sum(g.calls for g in want.groups)
        assert meter.cost_nanos == sum(costed(c, CATALOGUE)[0] for c in committed
                                       if window.start <= c.at < window.end)  # fmt: skip
        async with db.unit_of_work() as session:
            await RollupRepository(session).rebuild(org)
        async with db.unit_of_work() as session:
            assert_same(await SpendRepository(session).fetch(org, window), want)

    with_database(config, scenario)


def test_rollups_equal_the_raw_records_after_random_batches_and_crashes(
    empty_database: str,
) -> None:
    config = Settings(database_url=empty_database, environment="test")
    runner.upgrade(config)

    @settings(
        max_examples=30,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],
    )
    @given(drawn=batches, window_hours=windows)
    def property(drawn: list[tuple[list[Call], bool]], window_hours: tuple[int, int]) -> None:
        check(config, drawn, window_hours)

    property()
