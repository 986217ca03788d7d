"""Usage records for the analyses' unit tests, and an in-memory aggregation of them.

`aggregate()` computes the rows `SpendRepository` computes in SQL, written again here in
plain Python from the records (an independent oracle, so the unit tests run on realistic
record-level variants without a database). Costs are exact nano-dollars from the
catalogue's prices, or the record's own `cost_usd`.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from apex.usage.pricing import Catalogue, Tokens, cost_of, default_catalogue
from apex.usage.spend import (
    DayRow,
    DuplicateRow,
    FitRow,
    GroupRow,
    HourRow,
    PrefixRow,
    SpendData,
    Window,
)

START = datetime(2026, 10, 1, tzinfo=UTC)
MONTH = Window(START, START + timedelta(days=30))
NANOS = 10**9


@dataclass
class Call:
    """One LLM call as a customer's gateway logs it."""

    id: str
    at: datetime
    provider: str
    model: str
    workload: str
    input: int = 0
    cached: int = 0
    written: int = 0
    output: int = 0
    reasoning: int = 0
    status: str = "ok"
    latency_ms: int | None = 800
    end_user: str | None = "user-1"
    prompt_hash: str | None = None
    prefix_hash: str | None = None
    prefix_tokens: int = 0
    cost_usd: Decimal | None = None

    @property
    def tokens(self) -> Tokens:
        return Tokens(self.input, self.cached, self.written, self.output, self.reasoning)


def costed(call: Call, catalogue: Catalogue) -> tuple[int, str]:
    """(cost in nano-dollars, cost source), as ingestion stores them."""
    if call.cost_usd is not None:
        return int(call.cost_usd * NANOS), "reported"
    price = catalogue.find(call.provider, call.model)
    if price is None:
        return 0, "unpriced"
    return int(cost_of(price, call.tokens) * NANOS), "catalogue"


def aggregate(
    calls: list[Call], window: Window = MONTH, catalogue: Catalogue | None = None
) -> SpendData:
    catalogue = catalogue or default_catalogue()
    inside = [c for c in calls if window.start <= c.at < window.end]
    groups: dict[tuple[str, ...], list[tuple[Call, int]]] = defaultdict(list)
    days: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    hours: dict[tuple[str, str, str, int], int] = defaultdict(int)
    prefixes: dict[tuple[str, str, str, str], list[Call]] = defaultdict(list)
    duplicates: dict[tuple[str, str, str, str], list[tuple[Call, int]]] = defaultdict(list)
    fits: dict[tuple[str, str], list[tuple[Call, int]]] = defaultdict(list)
    for call in inside:
        nanos, source = costed(call, catalogue)
        key: tuple[str, str, str] = (call.workload, call.provider, call.model)
        groups[(*key, call.status, source)].append((call, nanos))
        day = days[call.at.astimezone(UTC).strftime("%Y-%m-%d")]
        day[0], day[1] = day[0] + 1, day[1] + nanos
        hours[(*key, call.at.astimezone(UTC).hour)] += 1
        if call.prefix_hash and not call.cached and not call.written:
            prefixes[(*key, call.prefix_hash)].append(call)
        if call.prompt_hash and call.status == "ok" and source != "unpriced":
            duplicates[(*key, call.prompt_hash)].append((call, nanos))
        if source == "reported":
            fits[(call.provider, call.model)].append((call, nanos))
    return SpendData(
        window=window,
        groups=[_group(key, rows) for key, rows in sorted(groups.items())],
        days=[DayRow(d, n, c) for d, (n, c) in sorted(days.items())],
        prefixes=[_prefix(key, rows) for key, rows in sorted(prefixes.items()) if len(rows) >= 2],
        duplicates=[
            _duplicate(key, rows) for key, rows in sorted(duplicates.items()) if len(rows) >= 2
        ],
        hours=[HourRow(*key, count) for key, count in sorted(hours.items())],
        fits=[_fit(key, rows) for key, rows in sorted(fits.items())],
    )


def _ids(calls: list[Call]) -> tuple[str, str]:
    ids = sorted(c.id for c in calls)
    return ids[0], ids[-1]


def _group(key: tuple[str, ...], rows: list[tuple[Call, int]]) -> GroupRow:
    calls = [c for c, _ in rows]
    timed = [c.latency_ms for c in calls if c.latency_ms is not None]
    return GroupRow(
        workload=key[0],
        provider=key[1],
        model=key[2],
        status=key[3],
        cost_source=key[4],
        calls=len(calls),
        tokens=sum((c.tokens for c in calls), Tokens()),
        cost_nanos=sum(n for _, n in rows),
        calls_with_end_user=sum(c.end_user is not None for c in calls),
        first_record_id=_ids(calls)[0],
        last_record_id=_ids(calls)[1],
        max_prompt_tokens=max(c.tokens.prompt for c in calls),
        max_output_tokens=max(c.tokens.completion for c in calls),
        latency_ms_sum=sum(timed),
        calls_with_latency=len(timed),
    )


def _prefix(key: tuple[str, str, str, str], calls: list[Call]) -> PrefixRow:
    day_count = len({c.at.astimezone(UTC).date() for c in calls})
    total = sum(c.prefix_tokens for c in calls)
    workload, provider, model, prefix_hash = key
    first, last = _ids(calls)
    return PrefixRow(
        workload, provider, model, prefix_hash, len(calls), day_count, total, first, last
    )


def _duplicate(key: tuple[str, str, str, str], rows: list[tuple[Call, int]]) -> DuplicateRow:
    workload, provider, model, prompt_hash = key
    first, last = _ids([c for c, _ in rows])
    cost = sum(n for _, n in rows)
    return DuplicateRow(workload, provider, model, prompt_hash, len(rows), cost, first, last)


def _fit(key: tuple[str, str], rows: list[tuple[Call, int]]) -> FitRow:
    sums: dict[str, float] = defaultdict(float)
    for call, nanos in rows:
        v = {"i": call.input + call.written, "r": call.cached, "o": call.output + call.reasoning}
        v["c"] = nanos
        sums["c"] += nanos
        for pair in ("ii", "ir", "io", "rr", "ro", "oo", "ic", "rc", "oc", "cc"):
            sums[pair] += float(v[pair[0]]) * float(v[pair[1]])
    return FitRow(key[0], key[1], len(rows), dict(sums))


def spread(
    count: int,
    *,
    hours: tuple[int, int] = (0, 24),
    days: int = 30,
    start: datetime = START,
) -> list[datetime]:
    """`count` instants spread evenly over `days` days, inside [hours) of each UTC day."""
    first, last = hours
    span = (last - first) * 3600
    return [
        start + timedelta(days=n % days, hours=first, seconds=(n * 7919) % span)
        for n in range(count)
    ]


def calls_of(workload: str, provider: str, model: str, count: int, **fields: Any) -> list[Call]:
    """`count` calls; a field given as a callable is called with the call's index."""
    at = fields.pop("at", None) or spread(count)
    return [
        Call(
            id=f"{workload}-{n:06d}",
            at=at[n],
            provider=provider,
            model=model,
            workload=workload,
            **{k: (v(n) if callable(v) else v) for k, v in fields.items()},
        )
        for n in range(count)
    ]
