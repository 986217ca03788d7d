"""Aggregate rows the analyses work from: what SQL hands back, plain and picklable.

Rows carry integer token and nano-dollar sums (exact on every backend); turning them into
dollars and recommendations is the analyses' job (apex.agents.tools).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from apex.usage.models import NANOS_PER_USD
from apex.usage.pricing import Tokens


@dataclass(frozen=True, slots=True)
class Window:
    """[start, end) of the records analysed."""

    start: datetime
    end: datetime

    @property
    def days(self) -> float:
        return (self.end - self.start).total_seconds() / 86_400

    def whole_hours(self) -> Window:
        """The smallest window of whole UTC hours that covers this one: the rollups' grain."""
        return Window(hour_floor(self.start), hour_ceiling(self.end))


@dataclass(frozen=True, slots=True)
class WindowTotals:
    calls: int
    failed_calls: int
    cost_nanos: int


def month_start(instant: datetime) -> datetime:
    """The start of the UTC calendar month `instant` falls in."""
    return hour_floor(instant).replace(day=1, hour=0)


def next_month(start: datetime) -> datetime:
    """The start of the month after the one starting at `start`."""
    return (start + timedelta(days=32)).replace(day=1)


def hour_floor(instant: datetime) -> datetime:
    """The start of the UTC hour `instant` falls in."""
    return instant.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def hour_ceiling(instant: datetime) -> datetime:
    """The start of the first whole UTC hour at or after `instant`."""
    floor = hour_floor(instant)
    return floor if floor == instant else floor + timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class GroupRow:
    """Calls of one workload on one model with one status and one cost source (`reported`,
    `catalogue`, or `unpriced`: a model nobody had a price for, stored at cost 0)."""

    workload: str
    provider: str
    model: str
    status: str
    calls: int
    tokens: Tokens
    cost_nanos: int
    calls_with_end_user: int
    first_record_id: str
    last_record_id: str
    cost_source: str = "catalogue"
    max_prompt_tokens: int = 0
    max_output_tokens: int = 0
    latency_ms_sum: int = 0
    calls_with_latency: int = 0


@dataclass(frozen=True, slots=True)
class HourRow:
    """Calls of one workload on one model in one UTC hour of the day (0-23), all days."""

    workload: str
    provider: str
    model: str
    hour: int
    calls: int


@dataclass(frozen=True, slots=True)
class FitRow:
    """Sufficient statistics of a least-squares fit of reported cost (nano-dollars) on
    token counts for one model: i = input + cache write, r = cached input, o = output +
    reasoning, c = cost. Sums of products, as floats (they overflow 64-bit integers)."""

    provider: str
    model: str
    calls: int
    sums: dict[str, float]  # "ii", "ir", "io", "rr", "ro", "oo", "ic", "rc", "oc", "cc", "c"


@dataclass(frozen=True, slots=True)
class DayRow:
    day: str  # YYYY-MM-DD, UTC
    calls: int
    cost_nanos: int


@dataclass(frozen=True, slots=True)
class BreakdownRow:
    """Calls, tokens and cost of one workload x provider x model on one UTC day."""

    day: str  # YYYY-MM-DD, UTC
    workload: str
    provider: str
    model: str
    calls: int
    input_tokens: int  # prompt tokens of every kind (cached and cache writes included)
    output_tokens: int  # completion tokens, reasoning included
    cost_nanos: int
    unpriced_calls: int  # stored before any price was known: cost 0 until one exists
    reported_calls: int  # costed from the cost the customer sent


@dataclass(frozen=True, slots=True)
class PrefixRow:
    """Calls sharing a prompt prefix (`prefix_hash`) that neither read nor wrote a cache."""

    workload: str
    provider: str
    model: str
    prefix_hash: str
    calls: int
    days: int
    prefix_tokens: int  # summed over the calls
    first_record_id: str
    last_record_id: str


@dataclass(frozen=True, slots=True)
class DuplicateRow:
    """Successful calls with the same full prompt (`prompt_hash`)."""

    workload: str
    provider: str
    model: str
    prompt_hash: str
    calls: int
    cost_nanos: int
    first_record_id: str
    last_record_id: str


@dataclass(frozen=True, slots=True)
class RepeatSummary:
    """The repeated prompts of one workload on one logged model, summed: all the
    response-caching rule needs of them (the rows themselves can be hundreds of thousands,
    and pickling them into a sandbox process costs more than the rule)."""

    workload: str
    provider: str
    model: str
    prompts: int
    repeats: int  # calls beyond the first of each prompt
    cost_nanos: int
    once_usd: Decimal  # one call per prompt, at each prompt's average cost
    examples: tuple[str, ...]  # the smallest first record ids, at most EXAMPLES


EXAMPLES = 3


def summarise_repeats(rows: list[DuplicateRow]) -> list[RepeatSummary]:
    """One `RepeatSummary` per (workload, provider, model) of the rows, in key order."""
    by_key: dict[tuple[str, str, str], list[DuplicateRow]] = {}
    for row in rows:
        by_key.setdefault((row.workload, row.provider, row.model), []).append(row)
    return [
        RepeatSummary(
            workload=workload,
            provider=provider,
            model=model,
            prompts=len(found),
            repeats=sum(r.calls - 1 for r in found),
            cost_nanos=sum(r.cost_nanos for r in found),
            once_usd=sum(
                (Decimal(r.cost_nanos) / NANOS_PER_USD / r.calls for r in found), Decimal(0)
            ),
            examples=tuple(sorted({r.first_record_id for r in found})[:EXAMPLES]),
        )
        for (workload, provider, model), found in sorted(by_key.items())
    ]


@dataclass(frozen=True, slots=True)
class SpendData:
    """Everything the analyses need about one organisation's window, fetched once."""

    window: Window
    groups: list[GroupRow]
    days: list[DayRow]
    prefixes: list[PrefixRow]
    duplicates: list[DuplicateRow]
    hours: list[HourRow] = field(default_factory=list)
    fits: list[FitRow] = field(default_factory=list)
    # `duplicates` summed, instead of them (what a sandboxed recommender is sent).
    repeats: list[RepeatSummary] | None = None

    def repeat_summaries(self) -> list[RepeatSummary]:
        return self.repeats if self.repeats is not None else summarise_repeats(self.duplicates)
