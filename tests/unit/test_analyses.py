"""The analyses against hand-computed figures, and properties that hold for any data."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apex.agents.tools import analyses
from apex.agents.tools.analyses import Recommendation
from apex.demo import generate_month
from apex.usage.pricing import (
    Catalogue,
    ModelPrice,
    Tokens,
    default_catalogue,
    parse_catalogue,
    to_cents,
)
from apex.usage.spend import DayRow, DuplicateRow, GroupRow, PrefixRow, SpendData, Window
from tests.unit.records import MONTH, START, Call, aggregate, calls_of, spread

pytestmark = pytest.mark.unit
CATALOGUE = default_catalogue()
ACME = {"provider": "acme", "price_date": "2026-01-01"}
ENTRY_DEFAULTS: dict[str, Any] = {
    "capability": "mid", "context_window": 100_000, "input": "1", "cached_input": "1",
    "cache_write": "1", "output": "2", "batch_discount": "0", "price_date": "2026-11-01",
    "source": "negotiated",
}  # fmt: skip


def group(
    workload: str,
    provider: str,
    model: str,
    calls: int,
    cost_usd: str,
    *,
    status: str = "ok",
    tokens: Tokens = Tokens(),
) -> GroupRow:
    return GroupRow(
        workload=workload,
        provider=provider,
        model=model,
        status=status,
        calls=calls,
        tokens=tokens,
        cost_nanos=int(Decimal(cost_usd) * 10**9),
        calls_with_end_user=calls,
        first_record_id=f"{workload}-1",
        last_record_id=f"{workload}-{calls}",
    )


def data(*groups: GroupRow, window: Window = MONTH) -> SpendData:
    return SpendData(window=window, groups=list(groups), days=[], prefixes=[], duplicates=[])


def figures(rec: analyses.Recommendation) -> tuple[str, str, str]:
    return (
        str(rec.current_monthly_usd),
        str(rec.projected_monthly_usd),
        str(rec.savings_monthly_usd),
    )


def run(name: str, *calls: list[Call], catalogue: Catalogue = CATALOGUE) -> list[Recommendation]:
    spend = aggregate([c for batch in calls for c in batch], catalogue=catalogue)
    catalogue = catalogue.with_overrides(analyses.derive_prices(spend.fits, catalogue))
    found: list[Recommendation] = analyses.RECOMMENDERS[name](spend, catalogue)
    return found


def cycle(*values: int) -> Callable[[int], int]:
    return lambda n: values[n % len(values)]


# --- model right-sizing ------------------------------------------------------------------
def test_right_sizing_picks_the_cheapest_model_that_fits_and_names_the_runner_up() -> None:
    # A classifier answering 3 tokens, logged three ways (dated, Azure, plain): one slice.
    # 3,000 calls x 500 in / 3 out on gpt-4o ($2.50 / $10.00): 3.75 + 0.09 = $3.84.
    # Short prompts and answers fit a small model. OpenAI's current, non-reasoning models
    # below frontier, on these tokens: gpt-4.1-nano (0.10/0.40) 0.15 + 0.0036 = $0.1536;
    # gpt-4o-mini (0.15/0.60) 0.225 + 0.0054 = $0.2304; gpt-4.1-mini (0.40/1.60) $0.6144.
    # gpt-5-nano is cheaper still but reasoning: its hidden tokens would change the bill.
    logged = cycle(0, 1, 2)
    names = [("openai", "gpt-4o-2024-08-06"), ("azure", "gpt-4o"), ("openai", "gpt-4o")]
    calls = [
        replace(call, provider=names[logged(n)][0], model=names[logged(n)][1])
        for n, call in enumerate(
            calls_of("classify", "openai", "gpt-4o", 3000, input=500, output=3)
        )
    ]
    [rec] = run("model_right_sizing", calls)
    assert (rec.provider, rec.model) == ("openai", "gpt-4o")
    assert rec.evidence["target_model"] == "gpt-4.1-nano"
    assert rec.evidence["runner_up"] == {"model": "gpt-4o-mini", "projected_monthly_usd": "0.23"}
    assert figures(rec) == ("3.84", "0.15", "3.69")
    assert rec.evidence["logged_as"] == [
        "azure/gpt-4o",
        "openai/gpt-4o",
        "openai/gpt-4o-2024-08-06",
    ]


def test_right_sizing_respects_the_largest_context_seen() -> None:
    catalogue = parse_catalogue(
        json.dumps(
            {
                "providers": [
                    {"provider": "acme", "source": "https://acme.test", "batch_discount": "0"}
                ],
                "models": [
                    {**ACME, "model": "big", "capability": "frontier", "context_window": 200_000,
                     "input": "10", "output": "30"},
                    {**ACME, "model": "tiny", "capability": "small", "context_window": 8_000,
                     "input": "0.10", "output": "0.20"},
                    {**ACME, "model": "roomy", "capability": "small", "context_window": 128_000,
                     "input": "0.30", "output": "0.60"},
                ],
            }
        )
    )  # fmt: skip
    short = calls_of("extract", "acme", "big", 99, input=1000, output=10)
    [rec] = run("model_right_sizing", short, catalogue=catalogue)
    assert (rec.evidence["target_model"], rec.evidence["runner_up"]["model"]) == ("tiny", "roomy")
    # One call of 20,000 tokens: the 8,000-token model cannot take it.
    long = calls_of("extract-long", "acme", "big", 1, input=20_000, output=10)
    [rec] = run(
        "model_right_sizing", short, [replace(long[0], workload="extract")], catalogue=catalogue
    )
    assert (rec.evidence["target_model"], rec.evidence["runner_up"]) == ("roomy", None)


def test_right_sizing_leaves_work_that_needs_its_model_alone() -> None:
    # Long answers are not simple work; a small model has nothing smaller; 49 calls are few.
    assert not run(
        "model_right_sizing", calls_of("write", "openai", "gpt-4o", 500, input=900, output=600)
    )
    assert not run(
        "model_right_sizing", calls_of("tag", "openai", "gpt-4o-mini", 500, input=300, output=3)
    )
    assert not run(
        "model_right_sizing", calls_of("tag", "openai", "gpt-4o", 49, input=300, output=3)
    )
    # A fine-tune does the work it was tuned for: not moved to a model without the tuning
    # (the same 500 calls on the base gpt-4o are right-sized).
    assert not run(
        "model_right_sizing",
        calls_of("tag", "openai", "ft:gpt-4o-2024-08-06:acme::B2c3", 500, input=300, output=3),
    )
    assert run("model_right_sizing", calls_of("tag", "openai", "gpt-4o", 500, input=300, output=3))


# --- prompt caching ------------------------------------------------------------------------
def support(count: int, **fields: Any) -> list[Call]:
    defaults = {"input": 4500, "output": 200, "prefix_hash": "p1", "prefix_tokens": 2000}
    return calls_of("support", "anthropic", "claude-sonnet-4-5", count, **{**defaults, **fields})


def test_prompt_caching_counts_one_cache_write_per_prefix_per_day() -> None:
    # claude-sonnet-4-5: input $3.00, cached $0.30, cache write $3.75 per million.
    # 300 calls over 30 days with a 2,000-token prefix: 600,000 prefix tokens cost $1.80.
    # Written once a day: 60,000 tokens (+$0.75/M); read 540,000 (-$2.70/M):
    # savings = 0.54 x 2.70 - 0.06 x 0.75 = 1.458 - 0.045 = $1.413 -> projected 0.387.
    [rec] = run("prompt_caching", support(300))
    assert figures(rec) == ("1.80", "0.39", "1.41")


def test_prompt_caching_leaves_cached_and_short_prefixes_alone() -> None:
    # Already cached (reads after one write a day): nothing left to cache.
    cached = support(300, input=2500, cached=lambda n: 0 if n % 10 == 0 else 2000,
                     written=lambda n: 2000 if n % 10 == 0 else 0)  # fmt: skip
    assert not run("prompt_caching", cached)
    # Below the provider's cacheable minimum (1,024 tokens).
    assert not run("prompt_caching", support(300, prefix_tokens=800))


# --- response caching ----------------------------------------------------------------------
def test_response_caching_keeps_one_call_per_distinct_prompt() -> None:
    # 2,000 calls, 100 questions asked 20 times each, on gpt-4.1-mini ($0.40 / $1.60):
    # 2,000 x (2,000 x 0.40 + 300 x 1.60)/1M = $2.56; one answer per question remains:
    # 100 x $0.00128 = $0.128 -> $0.13.
    faq = calls_of("faq", "openai", "gpt-4.1-mini", 2000, input=2000, output=300,
                   prompt_hash=lambda n: f"q{n % 100}")  # fmt: skip
    [rec] = run("response_caching", faq)
    assert figures(rec) == ("2.56", "0.13", "2.43")
    assert rec.evidence["repeated_calls"] == 1900


def test_response_caching_ignores_retries_and_rare_repeats() -> None:
    # A timed-out call retried with the same prompt is not a repeat answer.
    first = calls_of("chat", "openai", "gpt-4.1-mini", 500, input=800, output=100,
                     prompt_hash=lambda n: f"c{n}")  # fmt: skip
    retried = [replace(c, id=c.id + "-try1", status="timeout", output=0) for c in first[:40]]
    assert not run("response_caching", first, retried)
    # 12 repeats in 1,000 calls (1.2%): a few people asking the same thing, not a pattern.
    rare = calls_of("chat", "openai", "gpt-4.1", 1000, input=8000, output=500,
                    prompt_hash=lambda n: f"c{n % 988}")  # fmt: skip
    assert not run("response_caching", rare)


# --- batch API -----------------------------------------------------------------------------
def nightly(count: int, **fields: Any) -> list[Call]:
    defaults: dict[str, Any] = {
        "at": spread(count, hours=(1, 5)),
        "input": 3000,
        "output": 800,
        "latency_ms": lambda n: 8000 + (n * 37) % 22000,
        "end_user": lambda n: f"tenant-{n % 40}",  # gateways tag jobs with a tenant too
    }
    return calls_of("nightly", "openai", "gpt-4.1", count, **{**defaults, **fields})


def test_batch_api_finds_the_overnight_job_though_every_call_has_a_user() -> None:
    # 600 calls between 01:00 and 05:00 UTC, 8-30 s each, on gpt-4.1 ($2 / $8):
    # 600 x (3,000 x 2 + 800 x 8)/1M = $7.44; the batch API halves it.
    [rec] = run("batch_api", nightly(600))
    assert figures(rec) == ("7.44", "3.72", "3.72")
    assert rec.evidence["share_in_window"] == "100.0"


@pytest.mark.parametrize(
    "calls",
    [
        # People at all hours, answered in a second and a half.
        pytest.param(nightly(600, at=spread(600), latency_ms=1500), id="interactive"),
        # One time zone's office hours (09-17): 75% in any 6 hours, and fast.
        pytest.param(nightly(600, at=spread(600, hours=(9, 17)), latency_ms=2500), id="office"),
        # A slow reasoning chat, used around the clock.
        pytest.param(nightly(600, at=spread(600), latency_ms=20_000), id="slow-chat"),
        # A desk open 10:00-15:00 UTC: all in a few hours, but answered in a second.
        pytest.param(nightly(600, at=spread(600, hours=(10, 15)), latency_ms=1200), id="desk"),
        # Night-time, but no latency logged: no evidence nobody waits.
        pytest.param(nightly(600, latency_ms=None), id="no-latency"),
    ],
)
def test_batch_api_leaves_interactive_look_alikes_alone(calls: list[Call]) -> None:
    assert not run("batch_api", calls)


# --- prompt trimming -----------------------------------------------------------------------
def test_prompt_trimming_assumes_a_quarter_of_uncached_input() -> None:
    # gpt-4.1: 100 calls x 10,000 input tokens x $2.00/M = $2.00; 50x the output.
    [rec] = run(
        "prompt_trimming", calls_of("research", "openai", "gpt-4.1", 100, input=10_000, output=200)
    )
    assert figures(rec) == ("2.00", "1.50", "0.50")
    # A summariser's answers are long enough for its input (10:1), and 5,000-token prompts
    # are not very long.
    assert not run(
        "prompt_trimming", calls_of("digest", "openai", "gpt-4.1", 100, input=10_000, output=1000)
    )
    assert not run(
        "prompt_trimming", calls_of("chat", "openai", "gpt-4.1", 100, input=5000, output=20)
    )


# --- error waste ---------------------------------------------------------------------------
def test_error_waste_is_the_whole_cost_of_failed_calls() -> None:
    # 42 of 542 calls failed after sending 10,000 gpt-4o input tokens ($2.50/M): $1.05.
    def status(n: int) -> str:
        return "error" if n < 30 else "timeout" if n < 42 else "ok"

    agent = calls_of("agent", "openai", "gpt-4o", 542, input=10_000,
                     output=lambda n: 0 if n < 42 else 100, status=status)  # fmt: skip
    [rec] = run("error_waste", agent)
    assert figures(rec) == ("1.05", "0.00", "1.05")
    assert rec.evidence["by_status"] == {"error": 30, "timeout": 12}


def test_error_waste_ignores_rare_and_free_failures() -> None:
    # 20 errors in 5,000 calls (0.4%) is the normal rate of a provider.
    rare = calls_of("agent", "openai", "gpt-4o", 5000, input=1000, output=100,
                    status=lambda n: "error" if n < 20 else "ok")  # fmt: skip
    assert not run("error_waste", rare)
    # Rate-limited calls (429) send no tokens and cost nothing.
    limited = calls_of("agent", "openai", "gpt-4o", 500, input=lambda n: 0 if n < 60 else 1000,
                       output=lambda n: 0 if n < 60 else 100,
                       status=lambda n: "error" if n < 60 else "ok")  # fmt: skip
    assert not run("error_waste", limited)


def test_projection_scales_a_shorter_window_to_a_month() -> None:
    fortnight = Window(START, START + timedelta(days=15))
    errors = group("agent", "openai", "gpt-4o", 30, "3.00", status="error")
    [rec] = analyses.error_waste(data(errors, window=fortnight), CATALOGUE)
    assert rec.current_monthly_usd == Decimal("6.00")


# --- models the catalogue does not know -----------------------------------------------------
def reported(count: int, noise: Callable[[int], Decimal] = lambda n: Decimal(1)) -> list[Call]:
    """A model nobody prices, whose gateway reports $1.20 / $4.80 per million tokens."""
    calls = calls_of("extract", "acme", "secret-1", count,
                     input=lambda n: 1000 + (n * 37) % 3000,
                     output=lambda n: 0 if n < 30 else 50 + (n * 13) % 400,
                     status=lambda n: "error" if n < 30 else "ok")  # fmt: skip
    dollars = [(c.input * Decimal("1.20") + c.output * Decimal("4.80")) / 10**6 for c in calls]
    return [replace(c, cost_usd=dollars[n] * noise(n)) for n, c in enumerate(calls)]


def test_a_model_without_a_catalogue_price_is_analysed_from_its_reported_costs() -> None:
    calls = reported(400)
    spend = aggregate(calls)
    [price] = analyses.derive_prices(spend.fits, CATALOGUE)
    assert (price.input, price.output) == (Decimal("1.2000"), Decimal("4.8000"))
    assert "good fit" in price.source
    # Its failed calls are found, with the confidence an estimate deserves.
    [rec] = run("error_waste", calls)
    failed = sum((c.cost_usd or Decimal(0) for c in calls if c.status == "error"), Decimal(0))
    assert rec.current_monthly_usd == to_cents(failed)
    assert (rec.confidence, rec.evidence["price_basis"]) == ("medium", price.source)


def test_a_poor_fit_lowers_confidence_to_low() -> None:
    noisy = reported(400, noise=lambda n: Decimal("0.5") + Decimal(n % 11) / 10)
    [rec] = run("error_waste", noisy)
    assert rec.confidence == "low"
    assert "poor fit" in rec.evidence["price_basis"]


# --- coverage ------------------------------------------------------------------------------
def test_coverage_says_what_was_left_out_and_how_to_fix_it() -> None:
    # 80 calls of a model nobody prices, without cost; 5 calls of a priced one (too few);
    # 100 calls that are analysed: 100 x 1,000 gpt-4o input tokens = $0.25.
    mystery = calls_of("labs", "acme", "mystery-2", 80, input=700, output=30)
    few = calls_of("pilot", "openai", "gpt-4o", 5, input=100_000)  # 5 x $0.25 = $1.25
    main = calls_of("chat", "openai", "gpt-4o", 100, input=1000)
    spend = aggregate(mystery + few + main)
    covered = analyses.coverage(spend, CATALOGUE)
    assert (covered["spend_usd"], covered["analysed_usd"], covered["excluded_usd"]) == (
        "1.50",
        "0.25",
        "1.25",
    )
    unpriced, too_few = covered["excluded"]
    assert (unpriced["reason"], unpriced["model"], unpriced["calls"], unpriced["cost_usd"]) == (
        "unpriced", "mystery-2", 80, None,
    )  # fmt: skip
    assert "PUT /api/v1/pricing/acme/mystery-2" in unpriced["fix"]
    assert (too_few["reason"], too_few["workloads"], too_few["cost_usd"]) == (
        "too_few_calls", ["pilot"], "1.25",
    )  # fmt: skip
    # Once priced (an override), the stored records are costed and analysed.
    override = ModelPrice(**{**ENTRY_DEFAULTS, "provider": "acme", "model": "mystery-2"})
    priced = CATALOGUE.with_overrides([override])
    assert [e["reason"] for e in analyses.coverage(spend, priced)["excluded"]] == ["too_few_calls"]
    breakdown = analyses.spend_breakdown(spend, priced)
    # 80 x (700 x $1 + 30 x $2)/1M = $0.0608, on top of $1.50.
    assert breakdown.total_usd == Decimal("1.56")


def test_breakdown_orders_by_cost_and_reports_the_trend() -> None:
    days = [DayRow("2026-10-01", 10, 1_000_000_000), DayRow("2026-10-02", 10, 3_000_000_000)]
    groups = (
        group("a", "openai", "gpt-4o", 10, "1.00"),
        group("b", "openai", "gpt-4o", 10, "3.00"),
    )
    breakdown = analyses.spend_breakdown(replace(data(*groups), days=days))
    assert breakdown.total_usd == Decimal("4.00")
    assert [w["workload"] for w in breakdown.by_workload] == ["b", "a"]
    assert breakdown.by_model == [
        {"model": "openai/gpt-4o", "calls": 20, "cost_usd": "4", "share": "100.0"}
    ]
    assert breakdown.trend_percent == Decimal("200.0")


# --- a workload with no waste yields no finding ---------------------------------------------
SMALL = [p for p in CATALOGUE.candidates("openai") + CATALOGUE.candidates("anthropic")
         if p.capability == "small" and not p.reasoning]  # fmt: skip


@st.composite
def healthy_workload(draw: st.DrawFn) -> list[Call]:
    """Calls with nothing to find: the right model for the job, distinct prompts, people at
    most hours answered quickly, few failures, cached or short prefixes, modest prompts."""
    count = draw(st.integers(min_value=10, max_value=600))
    price = draw(st.sampled_from(SMALL))
    first_hour = draw(st.integers(min_value=0, max_value=12))
    width = draw(st.integers(min_value=12, max_value=24 - first_hour))
    input_tokens = draw(st.integers(min_value=50, max_value=6000))
    output_tokens = draw(st.integers(min_value=1, max_value=1500))
    failures = draw(st.integers(min_value=0, max_value=count // 100))
    prefix = draw(st.sampled_from(["none", "short", "cached"]))
    fields: dict[str, Any] = {
        "at": spread(count, hours=(first_hour, first_hour + width)),
        "input": input_tokens,
        "output": lambda n: 0 if n < failures else output_tokens,
        "status": lambda n: "error" if n < failures else "ok",
        "latency_ms": lambda n: 300 + (n * 53) % 2500,
        "end_user": lambda n: f"user-{n % 97}",
        "prompt_hash": lambda n: f"p{n}",
    }
    if prefix == "short":
        fields |= {"prefix_hash": "sys", "prefix_tokens": min(input_tokens, 900)}
    elif prefix == "cached" and input_tokens > 1200:
        fields |= {"prefix_hash": "sys", "prefix_tokens": 1200, "input": input_tokens - 1200,
                   "cached": 1200}  # fmt: skip
    return calls_of("healthy", price.provider, price.model, count, **fields)


@settings(max_examples=60, deadline=None)
@given(healthy_workload())
def test_a_workload_with_no_waste_yields_no_finding(calls: list[Call]) -> None:
    spend = aggregate(calls)
    _, found = analyses.run_analyses(spend, CATALOGUE, analyses.RECOMMENDERS)
    assert found == []


# --- properties ---------------------------------------------------------------------------
MODELS = [(p.provider, p.model) for p in CATALOGUE]
token_counts = st.integers(min_value=0, max_value=50_000_000)
groups = st.builds(
    lambda model, workload, status, calls, tokens, cost, users: GroupRow(
        workload, model[0], model[1], status, calls, tokens, cost, min(users, calls), "x", "y"
    ),
    st.sampled_from(MODELS),
    st.sampled_from(["chat", "batch", "rag"]),
    st.sampled_from(["ok", "error", "timeout"]),
    st.integers(min_value=1, max_value=100_000),
    st.builds(Tokens, token_counts, token_counts, token_counts, token_counts, token_counts),
    st.integers(min_value=0, max_value=10**13),
    st.integers(min_value=0, max_value=10),
)
prefixes = st.builds(
    lambda model, calls, days, per_call: PrefixRow(
        "rag", model[0], model[1], "p", calls, min(days, calls), per_call * calls, "x", "y"
    ),
    st.sampled_from(MODELS),
    st.integers(min_value=2, max_value=10_000),
    st.integers(min_value=1, max_value=30),
    st.integers(min_value=0, max_value=100_000),
)
duplicates = st.builds(
    lambda model, calls, cost: DuplicateRow("faq", model[0], model[1], "h", calls, cost, "x", "y"),
    st.sampled_from(MODELS),
    st.integers(min_value=2, max_value=10_000),
    st.integers(min_value=0, max_value=10**12),
)
spend = st.builds(
    lambda g, p, d, days: SpendData(Window(START, START + timedelta(days=days)), g, [], p, d),
    st.lists(groups, max_size=12),
    st.lists(prefixes, max_size=5),
    st.lists(duplicates, max_size=5),
    st.integers(min_value=1, max_value=90),
)


@settings(max_examples=200, deadline=None)
@given(spend)
def test_savings_never_exceed_the_spend_they_come_from(spend_data: SpendData) -> None:
    _, recommendations = analyses.run_analyses(spend_data, CATALOGUE, analyses.RECOMMENDERS)
    for rec in recommendations:
        assert Decimal(0) <= rec.savings_monthly_usd <= rec.current_monthly_usd, rec
    assert analyses.total_savings(
        (r.workload, r.savings_monthly_usd) for r in recommendations
    ) <= sum((r.current_monthly_usd for r in recommendations), Decimal(0))


@settings(max_examples=200, deadline=None)
@given(spend)
def test_breakdowns_sum_to_the_total_to_the_cent(spend_data: SpendData) -> None:
    breakdown = analyses.spend_breakdown(spend_data)
    for listing in (breakdown.by_model, breakdown.by_workload):
        summed = sum((Decimal(item["cost_usd"]) for item in listing), Decimal(0))
        assert to_cents(summed) == breakdown.total_usd
    assert sum(item["calls"] for item in breakdown.by_model) == breakdown.calls


def _demo_month_calls() -> list[Call]:
    """The demo's seeded month as calls: every analysis finds something in it."""
    end = START + timedelta(days=30)
    return [
        Call(
            id=r["id"], at=datetime.fromisoformat(r["timestamp"]), provider=r["provider"],
            model=r["model"], workload=r["workload"], input=r["input_tokens"],
            cached=r["cached_input_tokens"], written=r["cache_write_tokens"],
            output=r["output_tokens"], status=r["status"], latency_ms=r["latency_ms"],
            end_user=r["end_user"], prompt_hash=r["prompt_hash"],
            prefix_hash=r.get("prefix_hash"), prefix_tokens=r.get("prefix_tokens", 0),
        )
        for r in generate_month(7, end)
    ]  # fmt: skip


def test_each_recommender_finds_the_same_from_only_the_rows_it_reads() -> None:
    """The sandbox sends each recommender only what `READS` names: on a month where every
    analysis finds something, that changes no recommendation (a recommender that starts
    reading more rows without saying so fails here)."""
    data = aggregate(_demo_month_calls())
    assert set(analyses.READS) == set(analyses.RECOMMENDERS)
    kinds = set()
    for name, recommender in analyses.RECOMMENDERS.items():
        full = recommender(data, CATALOGUE)
        assert recommender(analyses.inputs_for(name, data), CATALOGUE) == full, name
        kinds |= {r.kind for r in full}
    assert kinds >= {"prompt_caching", "response_caching", "batch_api", "model_right_sizing"}
