"""The analyses: deterministic functions from aggregate rows (apex.usage.spend) to a spend
breakdown and recommendations. The rules and formulas are documented in docs/analyses.md;
every amount is Decimal, projected to a 30-day month and rounded to the cent only here.

These run in a resource-limited subprocess (apex.agents.sandbox): they are pure and take
only picklable rows, so a runaway one can be killed without touching the worker.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from apex.usage.models import NANOS_PER_USD
from apex.usage.pricing import Catalogue, ModelPrice, Tokens, cost_of, to_cents
from apex.usage.spend import GroupRow, SpendData

MONTH_DAYS = Decimal(30)
MILLION = Decimal(1_000_000)
Confidence = Literal["high", "medium", "low"]

# Thresholds (docs/analyses.md explains each).
RIGHT_SIZING_MIN_CALLS = 50
RIGHT_SIZING_MAX_AVG_PROMPT = 4_000
RIGHT_SIZING_MAX_AVG_OUTPUT = 500
CACHEABLE_PREFIX_TOKENS = 1_024
CACHING_MIN_CALLS = 10
DUPLICATES_MIN_REPEATS = 10
BATCH_MIN_CALLS = 100
TRIMMING_MIN_CALLS = 50
TRIMMING_MIN_AVG_PROMPT = 8_000
TRIMMING_MIN_PROMPT_TO_OUTPUT = 20
TRIMMING_SHARE = Decimal("0.25")
ERROR_MIN_FAILED_CALLS = 10


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


def spend_breakdown(data: SpendData) -> Breakdown:
    """Totals by model, workload and day; the trend; the top five (workload, model) drivers.
    Every list sums exactly to the total: amounts are exact until shown."""
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


# --- recommendations ----------------------------------------------------------------------
def _by_model(
    data: SpendData, statuses: tuple[str, ...] | None = None
) -> dict[tuple[str, str, str], list[GroupRow]]:
    grouped: dict[tuple[str, str, str], list[GroupRow]] = defaultdict(list)
    for group in data.groups:
        if statuses is None or group.status in statuses:
            grouped[(group.workload, group.provider, group.model)].append(group)
    return grouped


def _totals(groups: list[GroupRow]) -> tuple[int, Tokens, int, int]:
    tokens = Tokens()
    for group in groups:
        tokens = tokens + group.tokens
    return (
        sum(g.calls for g in groups),
        tokens,
        sum(g.cost_nanos for g in groups),
        sum(g.calls_with_end_user for g in groups),
    )


def _examples(groups: list[GroupRow]) -> list[str]:
    return sorted({g.first_record_id for g in groups} | {g.last_record_id for g in groups})[:3]


def _smaller_model(catalogue: Catalogue, price: ModelPrice) -> ModelPrice | None:
    if price.capability != "frontier":
        return None
    return catalogue.cheaper_alternative(price, "mid") or catalogue.cheaper_alternative(
        price, "small"
    )


def model_right_sizing(data: SpendData, catalogue: Catalogue) -> list[Recommendation]:
    """Frontier models on short, simple calls → the same provider's cheapest mid-tier model."""
    projection = Projection(data)
    found = []
    for (workload, provider, model), groups in _by_model(data).items():
        calls, tokens, cost, _ = _totals(groups)
        price = catalogue.find(provider, model)
        if price is None or calls < RIGHT_SIZING_MIN_CALLS:
            continue
        prompt = tokens.input + tokens.cached_input + tokens.cache_write
        output = tokens.output + tokens.reasoning
        if (
            prompt > RIGHT_SIZING_MAX_AVG_PROMPT * calls
            or output > RIGHT_SIZING_MAX_AVG_OUTPUT * calls
        ):
            continue
        target = _smaller_model(catalogue, price)
        if target is None:
            continue
        current = projection.monthly(usd(cost))
        projected = projection.monthly(cost_of(target, tokens))
        if projected >= current:
            continue
        found.append(
            Recommendation(
                kind="model_right_sizing",
                title=f"Move {workload} from {model} to {target.model}",
                workload=workload,
                provider=provider,
                model=model,
                current_monthly_usd=current,
                projected_monthly_usd=projected,
                confidence="medium",
                evidence={
                    "calls": calls,
                    "avg_prompt_tokens": prompt // calls,
                    "avg_output_tokens": output // calls,
                    "target_model": target.model,
                    "example_record_ids": _examples(groups),
                },
                steps=[
                    f"Run {workload}'s evaluation set on {target.model} and compare quality.",
                    f"Route {workload} to {target.model}; keep {model} as a fallback.",
                    "Watch error rate and user feedback for two weeks.",
                ],
            )
        )
    return found


def prompt_caching(data: SpendData, catalogue: Catalogue) -> list[Recommendation]:
    """Long prefixes sent uncached again and again → provider prompt caching. One cache
    write per prefix per day is assumed; every other call reads the prefix from the cache."""
    projection = Projection(data)
    per_model: dict[tuple[str, str, str], list[Any]] = defaultdict(list)
    for row in data.prefixes:
        if row.calls < CACHING_MIN_CALLS or row.prefix_tokens < CACHEABLE_PREFIX_TOKENS * row.calls:
            continue
        per_model[(row.workload, row.provider, row.model)].append(row)
    found = []
    for (workload, provider, model), rows in per_model.items():
        price = catalogue.find(provider, model)
        if price is None:
            continue
        current_window = Decimal(0)
        savings_window = Decimal(0)
        for row in rows:
            written = Decimal(row.prefix_tokens) * row.days / row.calls  # first call per day
            read = row.prefix_tokens - written
            current_window += Decimal(row.prefix_tokens) * price.input / MILLION
            savings_window += (
                read * (price.input - price.cached_input)
                - written * (price.cache_write - price.input)
            ) / MILLION
        if savings_window <= 0:
            continue
        current = projection.monthly(current_window)
        projected = projection.monthly(current_window - savings_window)
        found.append(
            Recommendation(
                kind="prompt_caching",
                title=f"Cache the repeated prompt prefixes of {workload}",
                workload=workload,
                provider=provider,
                model=model,
                current_monthly_usd=current,
                projected_monthly_usd=projected,
                confidence="high",
                evidence={
                    "prefixes": len(rows),
                    "calls": sum(r.calls for r in rows),
                    "prefix_tokens": sum(r.prefix_tokens for r in rows),
                    "example_record_ids": sorted({r.first_record_id for r in rows})[:3],
                },
                steps=[
                    "Put the fixed part of the prompt (instructions, examples) first.",
                    f"Enable prompt caching for {model} (cache_control / automatic caching).",
                    "Check cached_input_tokens in the provider's usage after deploying.",
                ],
            )
        )
    return found


def response_caching(data: SpendData, catalogue: Catalogue) -> list[Recommendation]:
    """Identical prompts answered again → cache responses; one call per prompt remains."""
    del catalogue
    projection = Projection(data)
    per_model: dict[tuple[str, str, str], list[Any]] = defaultdict(list)
    for row in data.duplicates:
        per_model[(row.workload, row.provider, row.model)].append(row)
    found = []
    for (workload, provider, model), rows in per_model.items():
        repeats = sum(r.calls - 1 for r in rows)
        if repeats < DUPLICATES_MIN_REPEATS:
            continue
        cost = sum((usd(r.cost_nanos) for r in rows), Decimal(0))
        kept = sum((usd(r.cost_nanos) / r.calls for r in rows), Decimal(0))  # one per prompt
        found.append(
            Recommendation(
                kind="response_caching",
                title=f"Serve {workload}'s repeated requests from a response cache",
                workload=workload,
                provider=provider,
                model=model,
                current_monthly_usd=projection.monthly(cost),
                projected_monthly_usd=projection.monthly(kept),
                confidence="high",
                evidence={
                    "distinct_prompts": len(rows),
                    "repeated_calls": repeats,
                    "example_record_ids": sorted({r.first_record_id for r in rows})[:3],
                },
                steps=[
                    "Key a cache on the full prompt hash (and model, temperature 0).",
                    "Serve hits from the cache; set a TTL that matches how fast answers change.",
                ],
            )
        )
    return found


def batch_api(data: SpendData, catalogue: Catalogue) -> list[Recommendation]:
    """Workloads no end user waits for → the provider's batch API at its discount."""
    projection = Projection(data)
    found = []
    for (workload, provider, model), groups in _by_model(data, ("ok",)).items():
        calls, _, cost, with_user = _totals(groups)
        price = catalogue.find(provider, model)
        if price is None or calls < BATCH_MIN_CALLS or with_user or price.batch_discount == 0:
            continue
        current = projection.monthly(usd(cost))
        projected = projection.monthly(usd(cost) * (1 - price.batch_discount))
        found.append(
            Recommendation(
                kind="batch_api",
                title=f"Send {workload} through the {provider} batch API",
                workload=workload,
                provider=provider,
                model=model,
                current_monthly_usd=current,
                projected_monthly_usd=projected,
                confidence="medium",
                evidence={
                    "calls": calls,
                    "calls_with_end_user": 0,
                    "batch_discount": str(price.batch_discount),
                    "example_record_ids": _examples(groups),
                },
                steps=[
                    f"Collect {workload}'s requests into JSONL batches.",
                    "Submit them to the batch endpoint; results arrive within 24 hours.",
                ],
            )
        )
    return found


def prompt_trimming(data: SpendData, catalogue: Catalogue) -> list[Recommendation]:
    """Very long prompts for short answers → trim context; 25% of uncached input assumed."""
    projection = Projection(data)
    found = []
    for (workload, provider, model), groups in _by_model(data).items():
        calls, tokens, _, _ = _totals(groups)
        price = catalogue.find(provider, model)
        if price is None or calls < TRIMMING_MIN_CALLS:
            continue
        prompt = tokens.input + tokens.cached_input + tokens.cache_write
        output = max(1, tokens.output + tokens.reasoning)
        if (
            prompt < TRIMMING_MIN_AVG_PROMPT * calls
            or prompt < TRIMMING_MIN_PROMPT_TO_OUTPUT * output
        ):
            continue
        input_cost = Decimal(tokens.input) * price.input / MILLION
        current = projection.monthly(input_cost)
        projected = projection.monthly(input_cost * (1 - TRIMMING_SHARE))
        found.append(
            Recommendation(
                kind="prompt_trimming",
                title=f"Trim the context {workload} sends",
                workload=workload,
                provider=provider,
                model=model,
                current_monthly_usd=current,
                projected_monthly_usd=projected,
                confidence="low",
                evidence={
                    "calls": calls,
                    "avg_prompt_tokens": prompt // calls,
                    "prompt_to_output": prompt // output,
                    "example_record_ids": _examples(groups),
                },
                steps=[
                    "Measure which retrieved passages and history turns the answers use.",
                    "Cap retrieved context and summarise old turns; re-run the evaluation set.",
                ],
            )
        )
    return found


def error_waste(data: SpendData, catalogue: Catalogue) -> list[Recommendation]:
    """Calls that failed or timed out still cost tokens: all of that spend is waste."""
    del catalogue
    projection = Projection(data)
    found = []
    for (workload, provider, model), groups in _by_model(data, ("error", "timeout")).items():
        calls, _, cost, _ = _totals(groups)
        if calls < ERROR_MIN_FAILED_CALLS or cost == 0:
            continue
        found.append(
            Recommendation(
                kind="error_waste",
                title=f"Stop paying for {workload}'s failed calls",
                workload=workload,
                provider=provider,
                model=model,
                current_monthly_usd=projection.monthly(usd(cost)),
                projected_monthly_usd=Decimal("0.00"),
                confidence="high",
                evidence={
                    "failed_calls": calls,
                    "by_status": {g.status: g.calls for g in groups},
                    "example_record_ids": _examples(groups),
                },
                steps=[
                    "Read the provider's error for the example records and fix the cause.",
                    "Set client timeouts above the model's p99 latency; retry with backoff.",
                    "Cap retries and stop retrying requests that cannot succeed (4xx).",
                ],
            )
        )
    return found


RECOMMENDERS: dict[str, Callable[[SpendData, Catalogue], list[Recommendation]]] = {
    "model_right_sizing": model_right_sizing,
    "prompt_caching": prompt_caching,
    "response_caching": response_caching,
    "batch_api": batch_api,
    "prompt_trimming": prompt_trimming,
    "error_waste": error_waste,
}


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
