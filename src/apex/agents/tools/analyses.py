"""The analyses: deterministic functions from aggregate rows (apex.usage.spend) to a spend
breakdown and recommendations. The rules and formulas are documented in docs/analyses.md;
every amount is Decimal, projected to a 30-day month and rounded to the cent only here.

These run in a resource-limited subprocess (apex.agents.sandbox): they are pure and take
only picklable rows, so a runaway one can be killed without touching the worker.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import date
from decimal import Decimal
from typing import Any, Literal

from apex.usage.models import NANOS_PER_USD, usd_to_nanos
from apex.usage.pricing import (
    Capability,
    Catalogue,
    ModelPrice,
    Tokens,
    catalogue_provider,
    cost_of,
    to_cents,
)
from apex.usage.spend import (
    EXAMPLES,
    FitRow,
    GroupRow,
    PrefixRow,
    RepeatSummary,
    SpendData,
)

MONTH_DAYS = Decimal(30)
MILLION = Decimal(1_000_000)
Confidence = Literal["high", "medium", "low"]

# Thresholds (docs/analyses.md explains each).
MIN_SLICE_CALLS = 10  # fewer calls of a workload on a model: too few to tell a pattern
RIGHT_SIZING_MIN_CALLS = 50
RIGHT_SIZING_MAX_AVG_PROMPT = 4_000
RIGHT_SIZING_MAX_AVG_OUTPUT = 500
SMALL_MODEL_MAX_AVG_PROMPT = 2_000  # short prompts with short answers: a small model fits
SMALL_MODEL_MAX_AVG_OUTPUT = 50
CACHEABLE_PREFIX_TOKENS = 1_024
CACHING_MIN_CALLS = 10
DUPLICATES_MIN_REPEATS = 10
DUPLICATES_MIN_SHARE = Decimal("0.05")
BATCH_MIN_CALLS = 100
BATCH_WINDOW_HOURS = 6
BATCH_MIN_WINDOW_SHARE = Decimal("0.90")
BATCH_MIN_AVG_LATENCY_MS = 5_000
BATCH_MIN_LATENCY_COVERAGE = Decimal("0.5")
TRIMMING_MIN_CALLS = 50
TRIMMING_MIN_AVG_PROMPT = 8_000
TRIMMING_MIN_PROMPT_TO_OUTPUT = 20
TRIMMING_SHARE = Decimal("0.25")
ERROR_MIN_FAILED_CALLS = 10
ERROR_MIN_SHARE = Decimal("0.02")
DERIVED_GOOD_FIT = Decimal("0.05")  # relative RMS error of a derived price's fit
TIERS = {"small": 0, "mid": 1, "frontier": 2}


def usd(nanos: int | Decimal) -> Decimal:
    return Decimal(nanos) / NANOS_PER_USD


@dataclass(frozen=True)
class Recommendation:
    kind: str
    title: str
    workload: str
    provider: str
    model: str
    current_monthly_usd: Decimal
    projected_monthly_usd: Decimal
    confidence: Confidence
    evidence: dict[str, Any]
    steps: list[str]

    @property
    def savings_monthly_usd(self) -> Decimal:
        return self.current_monthly_usd - self.projected_monthly_usd

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "title": self.title,
            "workload": self.workload,
            "provider": self.provider,
            "model": self.model,
            "current_monthly_usd": str(self.current_monthly_usd),
            "projected_monthly_usd": str(self.projected_monthly_usd),
            "savings_monthly_usd": str(self.savings_monthly_usd),
            "confidence": self.confidence,
            "evidence": self.evidence,
            "steps": self.steps,
        }


@dataclass
class Breakdown:
    total_usd: Decimal
    calls: int
    by_model: list[dict[str, Any]] = field(default_factory=list)
    by_workload: list[dict[str, Any]] = field(default_factory=list)
    by_day: list[dict[str, Any]] = field(default_factory=list)
    top_drivers: list[dict[str, Any]] = field(default_factory=list)
    trend_percent: Decimal | None = None
    monthly_usd: Decimal = Decimal(0)

    def as_dict(self) -> dict[str, Any]:
        return {
            "total_usd": str(self.total_usd),
            "monthly_usd": str(self.monthly_usd),
            "calls": self.calls,
            "by_model": self.by_model,
            "by_workload": self.by_workload,
            "by_day": self.by_day,
            "top_drivers": self.top_drivers,
            "trend_percent": None if self.trend_percent is None else str(self.trend_percent),
        }


class Projection:
    """Turns amounts over the analysed window into amounts per 30-day month."""

    def __init__(self, data: SpendData) -> None:
        days = Decimal(str(round(data.window.days, 6)))
        self.factor = MONTH_DAYS / days if days > 0 else Decimal(1)

    def monthly(self, window_usd: Decimal) -> Decimal:
        return to_cents(window_usd * self.factor)


# --- spend breakdown ----------------------------------------------------------------------
def _sum_by(
    groups: Iterable[GroupRow], key: Callable[[GroupRow], str]
) -> list[tuple[str, int, int]]:
    """(key, calls, cost nanos), dearest first."""
    calls: dict[str, int] = defaultdict(int)
    cost: dict[str, int] = defaultdict(int)
    for group in groups:
        calls[key(group)] += group.calls
        cost[key(group)] += group.cost_nanos
    return sorted(((k, calls[k], cost[k]) for k in calls), key=lambda item: (-item[2], item[0]))


def spend_breakdown(data: SpendData, catalogue: Catalogue | None = None) -> Breakdown:
    """Totals by model, workload and day; the trend; the top five (workload, model) drivers.
    Every list sums exactly to the total: amounts are exact until shown. With a catalogue,
    records stored unpriced count once their model has a price (`priced_groups`); calls of
    a model still without one are left out here and listed by `coverage`."""
    if catalogue is not None:
        data = replace(data, groups=priced_groups(data, catalogue))
    total = sum(group.cost_nanos for group in data.groups)
    projection = Projection(data)
    breakdown = Breakdown(
        total_usd=to_cents(usd(total)),
        calls=sum(group.calls for group in data.groups),
        monthly_usd=projection.monthly(usd(total)),
    )

    def share(nanos: int) -> str:
        return str((Decimal(100) * nanos / total).quantize(Decimal("0.1"))) if total else "0.0"

    for name, calls, nanos in _sum_by(data.groups, lambda g: f"{g.provider}/{g.model}"):
        breakdown.by_model.append(
            {"model": name, "calls": calls, "cost_usd": str(usd(nanos)), "share": share(nanos)}
        )
    for name, calls, nanos in _sum_by(data.groups, lambda g: g.workload):
        breakdown.by_workload.append(
            {"workload": name, "calls": calls, "cost_usd": str(usd(nanos)), "share": share(nanos)}
        )
    for name, _calls, nanos in _sum_by(data.groups, lambda g: f"{g.workload}|{g.model}")[:5]:
        workload, model = name.split("|", 1)
        breakdown.top_drivers.append(
            {
                "workload": workload,
                "model": model,
                "cost_usd": str(usd(nanos)),
                "share": share(nanos),
            }
        )
    breakdown.by_day = [
        {"day": day.day, "calls": day.calls, "cost_usd": str(usd(day.cost_nanos))}
        for day in data.days
    ]
    half = len(data.days) // 2
    if half:
        first = sum(day.cost_nanos for day in data.days[:half])
        second = sum(day.cost_nanos for day in data.days[-half:])
        if first:
            breakdown.trend_percent = (Decimal(100) * (second - first) / first).quantize(
                Decimal("0.1")
            )
    return breakdown


# --- the slices every recommender works on -------------------------------------------------
@dataclass
class Slice:
    """One workload on one model over the period: every status, priced. Logged spellings of
    one model (`gpt-4o`, `gpt-4o-2024-08-06`, `azure/gpt-4o`) are one slice."""

    workload: str
    provider: str
    model: str
    price: ModelPrice
    groups: list[GroupRow] = field(default_factory=list)
    prefixes: list[PrefixRow] = field(default_factory=list)
    repeats: list[RepeatSummary] = field(default_factory=list)
    hours: list[int] = field(default_factory=lambda: [0] * 24)
    logged_as: set[str] = field(default_factory=set)

    def _sum(self, statuses: tuple[str, ...] | None = None) -> tuple[int, Tokens, int]:
        calls, tokens, cost = 0, Tokens(), 0
        for group in self.groups:
            if statuses is None or group.status in statuses:
                calls, tokens, cost = (
                    calls + group.calls,
                    tokens + group.tokens,
                    cost + group.cost_nanos,
                )
        return calls, tokens, cost

    @property
    def calls(self) -> int:
        return self._sum()[0]

    @property
    def tokens(self) -> Tokens:
        return self._sum()[1]

    @property
    def cost_usd(self) -> Decimal:
        return usd(self._sum()[2])

    def ok(self) -> tuple[int, Tokens, Decimal]:
        calls, tokens, cost = self._sum(("ok",))
        return calls, tokens, usd(cost)

    def failed(self) -> tuple[int, Decimal]:
        calls, _, cost = self._sum(("error", "timeout"))
        return calls, usd(cost)

    @property
    def max_prompt_tokens(self) -> int:
        return max((g.max_prompt_tokens for g in self.groups), default=0)

    @property
    def max_output_tokens(self) -> int:
        return max((g.max_output_tokens for g in self.groups), default=0)

    def average_latency_ms(self) -> tuple[int | None, Decimal]:
        """(mean latency of the calls that report one, share of calls that do)."""
        timed = sum(g.calls_with_latency for g in self.groups)
        if not timed:
            return None, Decimal(0)
        total = sum(g.latency_ms_sum for g in self.groups)
        return total // timed, Decimal(timed) / self.calls

    def busiest_window(self, hours: int) -> tuple[int, Decimal]:
        """(first UTC hour, share of calls) of the busiest `hours`-long window of the day,
        wrapping past midnight."""
        total = sum(self.hours)
        if not total:
            return 0, Decimal(0)
        best = max(
            range(24), key=lambda h: (sum(self.hours[(h + i) % 24] for i in range(hours)), -h)
        )
        inside = sum(self.hours[(best + i) % 24] for i in range(hours))
        return best, Decimal(inside) / total

    def examples(self) -> list[str]:
        ids = {g.first_record_id for g in self.groups} | {g.last_record_id for g in self.groups}
        return sorted(ids)[:3]


def priced_groups(data: SpendData, catalogue: Catalogue) -> list[GroupRow]:
    """The groups with a cost: records stored unpriced are costed now if their model has a
    price since (an override, a newer catalogue); the rest are left out (see `coverage`)."""
    priced = []
    for group in data.groups:
        if group.cost_source != "unpriced":
            priced.append(group)
            continue
        price = catalogue.find(group.provider, group.model)
        if price is not None:
            nanos = usd_to_nanos(cost_of(price, group.tokens))
            priced.append(replace(group, cost_nanos=nanos, cost_source="catalogue"))
    return priced


class Analysis:
    """What every recommender starts from: the period's slices, their prices and the
    projection to a month. Built once per analysis run (the analyses are pure)."""

    def __init__(self, data: SpendData, catalogue: Catalogue) -> None:
        self.data = data
        self.catalogue = catalogue
        self.projection = Projection(data)
        self.slices: dict[tuple[str, str, str], Slice] = {}
        for group in priced_groups(data, catalogue):
            slice_ = self._slice(group.workload, group.provider, group.model)
            if slice_ is not None:
                slice_.groups.append(group)
        for prefix in data.prefixes:
            if (slice_ := self._slice(prefix.workload, prefix.provider, prefix.model)) is not None:
                slice_.prefixes.append(prefix)
        for repeated in data.repeat_summaries():
            found = self._slice(repeated.workload, repeated.provider, repeated.model)
            if found is not None:
                found.repeats.append(repeated)
        for hour in data.hours:
            if (slice_ := self._slice(hour.workload, hour.provider, hour.model)) is not None:
                slice_.hours[hour.hour] += hour.calls

    def _slice(self, workload: str, provider: str, model: str) -> Slice | None:
        price = self.catalogue.find(provider, model)
        if price is None:
            return None
        key = (workload, price.provider, price.model)
        if key not in self.slices:
            self.slices[key] = Slice(workload, price.provider, price.model, price)
        self.slices[key].logged_as.add(f"{provider}/{model}")
        return self.slices[key]

    def analysed(self) -> Iterator[Slice]:
        """Slices with enough calls to tell a pattern from chance, in a stable order."""
        for key in sorted(self.slices):
            if self.slices[key].calls >= MIN_SLICE_CALLS:
                yield self.slices[key]

    def recommend(
        self,
        slice_: Slice,
        *,
        kind: str,
        title: str,
        current_usd: Decimal,
        projected_usd: Decimal,
        confidence: Confidence,
        evidence: dict[str, Any],
        steps: list[str],
    ) -> Recommendation | None:
        """A recommendation from amounts over the period, or None when it saves nothing.
        A derived price lowers the confidence: the figures rest on an estimate."""
        current = self.projection.monthly(current_usd)
        projected = self.projection.monthly(projected_usd)
        if projected >= current:
            return None
        price = slice_.price
        if price.derived:
            confidence = "low" if confidence == "low" or "poor fit" in price.source else "medium"
            evidence = {**evidence, "price_basis": price.source}
        return Recommendation(
            kind=kind,
            title=title,
            workload=slice_.workload,
            provider=slice_.provider,
            model=slice_.model,
            current_monthly_usd=current,
            projected_monthly_usd=projected,
            confidence=confidence,
            evidence={
                **evidence,
                "logged_as": sorted(slice_.logged_as),
                "example_record_ids": evidence.get("example_record_ids", slice_.examples()),
            },
            steps=steps,
        )


SliceRule = Callable[[Analysis, Slice], "Recommendation | None"]


def per_slice(rule: SliceRule) -> Callable[[SpendData, Catalogue], list[Recommendation]]:
    """A recommender from a rule over one slice: the loop every analysis shares."""

    def recommender(data: SpendData, catalogue: Catalogue) -> list[Recommendation]:
        analysis = Analysis(data, catalogue)
        return [rec for s in analysis.analysed() if (rec := rule(analysis, s)) is not None]

    recommender.__name__ = rule.__name__.removeprefix("_")
    recommender.__doc__ = rule.__doc__
    return recommender


# --- the rules ---------------------------------------------------------------------------------
def _needed_tier(prompt_avg: int, output_avg: int) -> int:
    small = prompt_avg <= SMALL_MODEL_MAX_AVG_PROMPT and output_avg <= SMALL_MODEL_MAX_AVG_OUTPUT
    return TIERS["small"] if small else TIERS["mid"]


def _fitting_models(analysis: Analysis, slice_: Slice) -> list[tuple[Decimal, ModelPrice]]:
    """Cheaper models of the same provider that meet what the workload was seen to need,
    cheapest first (cost of this workload's own tokens at their prices)."""
    price, tokens, calls = slice_.price, slice_.tokens, slice_.calls
    needed = _needed_tier(tokens.prompt // calls, tokens.completion // calls)
    context = slice_.max_prompt_tokens + slice_.max_output_tokens
    fitting = [
        (cost_of(candidate, tokens), candidate)
        for candidate in analysis.catalogue.candidates(price.provider)
        if needed <= TIERS[candidate.capability] < TIERS[price.capability]
        and candidate.context_window >= context
        and (price.reasoning or not candidate.reasoning)  # hidden tokens would change the bill
    ]
    return sorted(fitting, key=lambda pair: (pair[0], pair[1].model))


def _model_right_sizing(analysis: Analysis, slice_: Slice) -> Recommendation | None:
    """Short, simple calls on a bigger model than they need → the cheapest model of the same
    provider that meets the workload's observed needs; the runner-up is named."""
    calls, tokens = slice_.calls, slice_.tokens
    if (
        slice_.price.fine_tuned  # what it was tuned for is not in another model
        or calls < RIGHT_SIZING_MIN_CALLS
        or tokens.prompt > RIGHT_SIZING_MAX_AVG_PROMPT * calls
        or tokens.completion > RIGHT_SIZING_MAX_AVG_OUTPUT * calls
    ):
        return None
    fitting = _fitting_models(analysis, slice_)
    if not fitting:
        return None
    (projected, target), *others = fitting
    runner_up = others[0] if others else None
    model = slice_.model
    return analysis.recommend(
        slice_,
        kind="model_right_sizing",
        title=f"Move {slice_.workload} from {model} to {target.model}",
        current_usd=slice_.cost_usd,
        projected_usd=projected,
        confidence="medium",
        evidence={
            "calls": calls,
            "avg_prompt_tokens": tokens.prompt // calls,
            "avg_output_tokens": tokens.completion // calls,
            "max_context_tokens": slice_.max_prompt_tokens + slice_.max_output_tokens,
            "target_model": target.model,
            "runner_up": None
            if runner_up is None
            else {
                "model": runner_up[1].model,
                "projected_monthly_usd": str(analysis.projection.monthly(runner_up[0])),
            },
        },
        steps=[
            f"Run {slice_.workload}'s evaluation set on {target.model} and compare quality.",
            f"Route {slice_.workload} to {target.model}; keep {model} as a fallback.",
            "Watch error rate and user feedback for two weeks.",
        ],
    )


def _prompt_caching(analysis: Analysis, slice_: Slice) -> Recommendation | None:
    """Long prefixes sent uncached again and again → provider prompt caching. One cache
    write per prefix per day is assumed; every other call reads the prefix from the cache."""
    price = slice_.price
    rows = [
        row
        for row in slice_.prefixes
        if row.calls >= CACHING_MIN_CALLS
        and row.prefix_tokens >= CACHEABLE_PREFIX_TOKENS * row.calls
    ]
    current = savings = Decimal(0)
    for row in rows:
        written = Decimal(row.prefix_tokens) * row.days / row.calls  # first call per day
        read = row.prefix_tokens - written
        current += Decimal(row.prefix_tokens) * price.input / MILLION
        savings += (
            read * (price.input - price.cached_input) - written * (price.cache_write - price.input)
        ) / MILLION
    if not rows or savings <= 0:
        return None
    return analysis.recommend(
        slice_,
        kind="prompt_caching",
        title=f"Cache the repeated prompt prefixes of {slice_.workload}",
        current_usd=current,
        projected_usd=current - savings,
        confidence="high",
        evidence={
            "prefixes": len(rows),
            "calls": sum(r.calls for r in rows),
            "prefix_tokens": sum(r.prefix_tokens for r in rows),
            "example_record_ids": sorted({r.first_record_id for r in rows})[:3],
        },
        steps=[
            "Put the fixed part of the prompt (instructions, examples) first.",
            f"Enable prompt caching for {slice_.model} (cache_control / automatic caching).",
            "Check cached_input_tokens in the provider's usage after deploying.",
        ],
    )


def _response_caching(analysis: Analysis, slice_: Slice) -> Recommendation | None:
    """Identical prompts answered again → cache responses; one call per prompt remains."""
    summaries = slice_.repeats
    repeats = sum(s.repeats for s in summaries)
    ok_calls = slice_.ok()[0]
    if repeats < DUPLICATES_MIN_REPEATS or repeats < DUPLICATES_MIN_SHARE * ok_calls:
        return None
    cost = sum((usd(s.cost_nanos) for s in summaries), Decimal(0))
    kept = sum((s.once_usd for s in summaries), Decimal(0))  # one call per prompt
    return analysis.recommend(
        slice_,
        kind="response_caching",
        title=f"Serve {slice_.workload}'s repeated requests from a response cache",
        current_usd=cost,
        projected_usd=kept,
        confidence="high",
        evidence={
            "distinct_prompts": sum(s.prompts for s in summaries),
            "repeated_calls": repeats,
            "example_record_ids": sorted({i for s in summaries for i in s.examples})[:EXAMPLES],
        },
        steps=[
            "Key a cache on the full prompt hash (and model, temperature 0).",
            "Serve hits from the cache; set a TTL that matches how fast answers change.",
        ],
    )


def _batch_api(analysis: Analysis, slice_: Slice) -> Recommendation | None:
    """Work nobody waits for → the provider's batch API at its discount. The signals: the
    calls come in one part of the day (a scheduled job, not people) and already take
    seconds each (nobody is waiting on them). User ids are no signal: gateways put one on
    every call, jobs included."""
    price = slice_.price
    calls, _, cost = slice_.ok()
    if calls < BATCH_MIN_CALLS or price.batch_discount == 0:
        return None
    start, share = slice_.busiest_window(BATCH_WINDOW_HOURS)
    latency, timed = slice_.average_latency_ms()
    if (
        share < BATCH_MIN_WINDOW_SHARE
        or latency is None
        or timed < BATCH_MIN_LATENCY_COVERAGE
        or latency < BATCH_MIN_AVG_LATENCY_MS
    ):
        return None
    end = (start + BATCH_WINDOW_HOURS) % 24
    return analysis.recommend(
        slice_,
        kind="batch_api",
        title=f"Send {slice_.workload} through the {slice_.provider} batch API",
        current_usd=cost,
        projected_usd=cost * (1 - price.batch_discount),
        confidence="medium",
        evidence={
            "calls": calls,
            "window_utc": f"{start:02d}:00-{end:02d}:00",
            "share_in_window": str((share * 100).quantize(Decimal("0.1"))),
            "avg_latency_ms": latency,
            "batch_discount": str(price.batch_discount),
        },
        steps=[
            f"Collect {slice_.workload}'s requests into JSONL batches.",
            "Submit them to the batch endpoint; results arrive within 24 hours.",
        ],
    )


def _prompt_trimming(analysis: Analysis, slice_: Slice) -> Recommendation | None:
    """Very long prompts for short answers → trim context; 25% of uncached input assumed."""
    calls, tokens = slice_.calls, slice_.tokens
    if (
        calls < TRIMMING_MIN_CALLS
        or tokens.prompt < TRIMMING_MIN_AVG_PROMPT * calls
        or tokens.prompt < TRIMMING_MIN_PROMPT_TO_OUTPUT * max(1, tokens.completion)
    ):
        return None
    input_cost = Decimal(tokens.input) * slice_.price.input / MILLION
    return analysis.recommend(
        slice_,
        kind="prompt_trimming",
        title=f"Trim the context {slice_.workload} sends",
        current_usd=input_cost,
        projected_usd=input_cost * (1 - TRIMMING_SHARE),
        confidence="low",
        evidence={
            "calls": calls,
            "avg_prompt_tokens": tokens.prompt // calls,
            "prompt_to_output": tokens.prompt // max(1, tokens.completion),
        },
        steps=[
            "Measure which retrieved passages and history turns the answers use.",
            "Cap retrieved context and summarise old turns; re-run the evaluation set.",
        ],
    )


def _error_waste(analysis: Analysis, slice_: Slice) -> Recommendation | None:
    """Calls that failed or timed out still cost tokens: all of that spend is waste."""
    failed, cost = slice_.failed()
    if failed < ERROR_MIN_FAILED_CALLS or failed < ERROR_MIN_SHARE * slice_.calls or not cost:
        return None
    return analysis.recommend(
        slice_,
        kind="error_waste",
        title=f"Stop paying for {slice_.workload}'s failed calls",
        current_usd=cost,
        projected_usd=Decimal(0),
        confidence="high",
        evidence={
            "failed_calls": failed,
            "by_status": {
                status: sum(g.calls for g in slice_.groups if g.status == status)
                for status in ("error", "timeout")
            },
        },
        steps=[
            "Read the provider's error for the example records and fix the cause.",
            "Set client timeouts above the model's p99 latency; retry with backoff.",
            "Cap retries and stop retrying requests that cannot succeed (4xx).",
        ],
    )


model_right_sizing = per_slice(_model_right_sizing)
prompt_caching = per_slice(_prompt_caching)
response_caching = per_slice(_response_caching)
batch_api = per_slice(_batch_api)
prompt_trimming = per_slice(_prompt_trimming)
error_waste = per_slice(_error_waste)


# --- prices derived from reported costs ---------------------------------------------------------
_FIT_FEATURES = ("i", "r", "o")  # input + cache write, cached input, output (FitRow)


def _solve(matrix: list[list[float]], vector: list[float]) -> list[float] | None:
    """Gaussian elimination with partial pivoting; None when the system is singular."""
    size = len(vector)
    rows = [[*matrix[k], vector[k]] for k in range(size)]
    for col in range(size):
        pivot = max(range(col, size), key=lambda r: abs(rows[r][col]))
        if abs(rows[pivot][col]) < 1e-9:
            return None
        rows[col], rows[pivot] = rows[pivot], rows[col]
        for r in range(size):
            if r != col:
                factor = rows[r][col] / rows[col][col]
                rows[r] = [a - factor * b for a, b in zip(rows[r], rows[col], strict=True)]
    return [rows[k][size] / rows[k][k] for k in range(size)]


def _pair(a: str, b: str) -> str:
    """The FitRow key of the sum of a * b ("io", never "oi")."""
    return "".join(sorted((a, b), key=_FIT_FEATURES.index))


def _least_squares(fit: FitRow) -> tuple[dict[str, float], float] | None:
    """Nano-dollars per token for each feature the records use, and the fit's relative RMS
    error (RMS of the residuals / mean cost). A feature whose price comes out negative is
    left out and the fit done again."""
    sums = fit.sums
    features = [f for f in _FIT_FEATURES if sums[f + f] > 0]
    while features:
        matrix = [[sums[_pair(a, b)] for b in features] for a in features]
        solution = _solve(matrix, [sums[f + "c"] for f in features])
        if solution is None:
            features = features[:-1]
            continue
        coefficients = dict(zip(features, solution, strict=True))
        negative = [f for f, value in coefficients.items() if value < 0]
        if negative:
            features = [f for f in features if f not in negative]
            continue
        sse = sums["cc"] - 2 * sum(coefficients[f] * sums[f + "c"] for f in features)
        sse += sum(
            coefficients[a] * coefficients[b] * sums[_pair(a, b)]
            for a in features
            for b in features
        )
        mean = sums["c"] / fit.calls
        error = (max(sse, 0.0) / fit.calls) ** 0.5 / mean if mean else 1.0
        return coefficients, error
    return None


def _per_million(nanos_per_token: float) -> Decimal:
    return (Decimal(str(nanos_per_token)) / 1000).quantize(Decimal("0.0001"))


def _nearest_capability(catalogue: Catalogue, provider: str, output: Decimal) -> Capability:
    """The tier of the same provider's model whose output price is closest (ratio-wise)."""
    peers = [p for p in catalogue if p.provider == provider and p.kind == "chat" and p.output > 0]
    if not peers or output <= 0:
        return "mid"
    nearest = min(peers, key=lambda p: abs(math.log(float(p.output / output))))
    return nearest.capability


def derive_prices(fits: Iterable[FitRow], catalogue: Catalogue) -> list[ModelPrice]:
    """Prices for models the catalogue does not know, estimated from the costs their
    records reported: a least-squares fit of cost on token counts (docs/analyses.md)."""
    derived = []
    for fit in fits:
        if catalogue.find(fit.provider, fit.model) is not None or not fit.sums["c"]:
            continue
        solved = _least_squares(fit)
        if solved is None:
            continue
        coefficients, error = solved
        input_price = _per_million(coefficients.get("i", 0.0))
        cached = min(_per_million(coefficients.get("r", float(input_price) * 1000)), input_price)
        output_price = _per_million(coefficients.get("o", 0.0))
        quality = "good fit" if Decimal(str(error)) <= DERIVED_GOOD_FIT else "poor fit"
        provider = catalogue_provider(fit.provider)
        derived.append(
            ModelPrice(
                provider=fit.provider,
                model=fit.model,
                capability=_nearest_capability(catalogue, provider, output_price),
                context_window=128_000,
                input=input_price,
                cached_input=cached,
                cache_write=input_price,
                output=output_price,
                batch_discount=Decimal(0),
                price_date=date(1970, 1, 1),
                source=f"derived from {fit.calls:,} records' reported cost by least squares; "
                f"fit error {error:.1%} ({quality})",
                derived=True,
            )
        )
    return derived


# --- coverage: what the recommendations did not look at, and why ---------------------------
def coverage(data: SpendData, catalogue: Catalogue) -> dict[str, Any]:
    """Spend analysed against spend left out, each part with its reason and its fix. The
    catalogue is the one the analyses used (derived prices included)."""
    analysis = Analysis(data, catalogue)
    total = sum((s.cost_usd for s in analysis.slices.values()), Decimal(0))
    excluded: list[dict[str, Any]] = []
    unpriced: dict[tuple[str, str], list[GroupRow]] = defaultdict(list)
    for group in data.groups:
        if group.cost_source == "unpriced" and catalogue.find(group.provider, group.model) is None:
            unpriced[(group.provider, group.model)].append(group)
    for (provider, model), groups in sorted(unpriced.items()):
        calls = sum(g.calls for g in groups)
        tokens = sum((g.tokens for g in groups), Tokens())
        excluded.append(
            {
                "reason": "unpriced",
                "provider": provider,
                "model": model,
                "workloads": sorted({g.workload for g in groups}),
                "calls": calls,
                "tokens": tokens.total,
                "cost_usd": None,
                "explanation": f"{provider}/{model} is not in the pricing catalogue and its "
                "records carry no cost_usd, so their cost is unknown.",
                "fix": f"Set its price (PUT /api/v1/pricing/{provider}/{model}, or apex pricing "
                "import) or send cost_usd with its records; the next run includes them.",
            }
        )
    few = [s for s in analysis.slices.values() if s.calls < MIN_SLICE_CALLS]
    for slice_ in sorted(few, key=lambda s: (s.workload, s.provider, s.model)):
        excluded.append(
            {
                "reason": "too_few_calls",
                "provider": slice_.provider,
                "model": slice_.model,
                "workloads": [slice_.workload],
                "calls": slice_.calls,
                "tokens": slice_.tokens.total,
                "cost_usd": str(to_cents(slice_.cost_usd)),
                "explanation": f"{slice_.calls} calls (fewer than {MIN_SLICE_CALLS}) are too "
                "few to tell a pattern from chance.",
                "fix": "Nothing to do: it is analysed once it has more calls.",
            }
        )
    excluded_usd = sum((s.cost_usd for s in few), Decimal(0))
    estimated = [
        {
            "provider": s.provider,
            "model": s.model,
            "workload": s.workload,
            "calls": s.calls,
            "cost_usd": str(to_cents(s.cost_usd)),
            "price_basis": s.price.source,
            "fix": f"Set its real price (PUT /api/v1/pricing/{s.provider}/{s.model}) for "
            "figures of full confidence.",
        }
        for s in analysis.slices.values()
        if s.price.derived
    ]
    return {
        "spend_usd": str(to_cents(total)),
        "analysed_usd": str(to_cents(total - excluded_usd)),
        "excluded_usd": str(to_cents(excluded_usd)),
        "analysed_share": str((100 * (total - excluded_usd) / total).quantize(Decimal("0.1")))
        if total
        else "100.0",
        "excluded": excluded,
        "estimated_prices": sorted(estimated, key=lambda e: (e["workload"], e["model"])),
    }


RECOMMENDERS: dict[str, Callable[[SpendData, Catalogue], list[Recommendation]]] = {
    "model_right_sizing": model_right_sizing,
    "prompt_caching": prompt_caching,
    "response_caching": response_caching,
    "batch_api": batch_api,
    "prompt_trimming": prompt_trimming,
    "error_waste": error_waste,
}


# What each recommender reads of a period's data beyond its groups, days and window. The
# sandbox sends each one only that (`inputs_for`): the repeated prompts alone can be a
# few hundred thousand rows, and every recommender process would otherwise unpickle them.
READS: dict[str, frozenset[str]] = {
    "model_right_sizing": frozenset(),
    "prompt_caching": frozenset({"prefixes"}),
    "response_caching": frozenset({"repeats"}),
    "batch_api": frozenset({"hours"}),
    "prompt_trimming": frozenset(),
    "error_waste": frozenset(),
}
_OPTIONAL_INPUTS = ("prefixes", "repeats", "hours", "fits")


def inputs_for(name: str, data: SpendData) -> SpendData:
    """`data` without the rows recommender `name` does not read."""
    reads = READS.get(name, frozenset(_OPTIONAL_INPUTS))
    return replace(
        data,
        prefixes=data.prefixes if "prefixes" in reads else [],
        duplicates=[],  # read as their summaries
        repeats=data.repeat_summaries() if "repeats" in reads else [],
        hours=data.hours if "hours" in reads else [],
        fits=data.fits if "fits" in reads else [],
    )


CONFIDENCE_ORDER = {"high": 0, "medium": 1, "low": 2}


def ranking_key(
    savings: Decimal, confidence: str, kind: str, workload: str, model: str
) -> tuple[Decimal, int, str, str, str]:
    """Largest savings first; ties by confidence, then names, so the order is stable."""
    return (-savings, CONFIDENCE_ORDER[confidence], kind, workload, model)


def rank(recommendations: Iterable[Recommendation]) -> list[Recommendation]:
    return sorted(
        recommendations,
        key=lambda r: ranking_key(r.savings_monthly_usd, r.confidence, r.kind, r.workload, r.model),
    )


def total_savings(savings_by_workload: Iterable[tuple[str, Decimal]]) -> Decimal:
    """Savings on the same workload overlap (they act on the same calls), so per workload
    only the largest counts; different workloads add up."""
    best: dict[str, Decimal] = {}
    for workload, savings in savings_by_workload:
        best[workload] = max(best.get(workload, Decimal(0)), savings)
    return sum(best.values(), Decimal("0.00"))


def run_analyses(
    data: SpendData, catalogue: Catalogue, names: Iterable[str]
) -> tuple[Breakdown, list[Recommendation]]:
    """The breakdown and the ranked recommendations of the named analyses."""
    found: list[Recommendation] = []
    for name in sorted(set(names) & RECOMMENDERS.keys()):
        found.extend(RECOMMENDERS[name](data, catalogue))
    return spend_breakdown(data), rank(found)
