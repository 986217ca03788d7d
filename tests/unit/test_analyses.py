"""The analyses against hand-computed figures, and properties that hold for any data."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apex.agents.tools import analyses
from apex.usage.pricing import Tokens, default_catalogue, to_cents
from apex.usage.spend import DayRow, DuplicateRow, GroupRow, PrefixRow, SpendData, Window

pytestmark = pytest.mark.unit
START = datetime(2026, 10, 1, tzinfo=UTC)
MONTH = Window(START, START + timedelta(days=30))
CATALOGUE = default_catalogue()


def group(
    workload: str,
    provider: str,
    model: str,
    calls: int,
    cost_usd: str,
    *,
    status: str = "ok",
    tokens: Tokens = Tokens(),
    with_user: int | None = None,
) -> GroupRow:
    return GroupRow(
        workload=workload,
        provider=provider,
        model=model,
        status=status,
        calls=calls,
        tokens=tokens,
        cost_nanos=int(Decimal(cost_usd) * 10**9),
        calls_with_end_user=calls if with_user is None else with_user,
        first_record_id=f"{workload}-1",
        last_record_id=f"{workload}-{calls}",
    )


def data(*groups: GroupRow, window: Window = MONTH, **rows: list) -> SpendData:  # type: ignore[type-arg]
    return SpendData(
        window=window,
        groups=list(groups),
        days=rows.get("days", []),
        prefixes=rows.get("prefixes", []),
        duplicates=rows.get("duplicates", []),
    )


def figures(rec: analyses.Recommendation) -> tuple[str, str, str]:
    return (
        str(rec.current_monthly_usd),
        str(rec.projected_monthly_usd),
        str(rec.savings_monthly_usd),
    )


def test_right_sizing_moves_short_calls_to_the_cheapest_mid_model() -> None:
    # 10,000 gpt-4o calls, 5M input + 1M output tokens: 5M x $2.50 + 1M x $10 = $22.50.
    # openai's mid models by input+output price: gpt-4.1-mini ($0.40 + $1.60) is cheapest:
    # 5M x $0.40 + 1M x $1.60 = $3.60.
    tokens = Tokens(input=5_000_000, output=1_000_000)
    [rec] = analyses.model_right_sizing(
        data(group("classify", "openai", "gpt-4o", 10_000, "22.50", tokens=tokens)), CATALOGUE
    )
    assert rec.evidence["target_model"] == "gpt-4.1-mini"
    assert figures(rec) == ("22.50", "3.60", "18.90")
    # Long outputs (600 tokens on average) are not "simple": nothing is recommended.
    long = Tokens(input=5_000_000, output=6_000_000)
    assert not analyses.model_right_sizing(
        data(group("write", "openai", "gpt-4o", 10_000, "72.50", tokens=long)), CATALOGUE
    )
    # Too few calls to judge.
    assert not analyses.model_right_sizing(
        data(group("classify", "openai", "gpt-4o", 49, "0.11", tokens=Tokens(input=24_500))),
        CATALOGUE,
    )


def test_prompt_caching_counts_one_cache_write_per_prefix_per_day() -> None:
    # claude-sonnet-4-5: input $3.00, cached $0.30, cache write $3.75 per million.
    # 300 calls over 30 days with a 2,000-token prefix: 600,000 prefix tokens cost $1.80.
    # Written once a day: 60,000 tokens (+$0.75/M); read 540,000 (-$2.70/M):
    # savings = 0.54 x 2.70 - 0.06 x 0.75 = 1.458 - 0.045 = $1.413 -> projected 0.387.
    prefix = PrefixRow("rag", "anthropic", "claude-sonnet-4-5", "p1", 300, 30, 600_000, "a", "b")
    [rec] = analyses.prompt_caching(data(prefixes=[prefix]), CATALOGUE)
    assert figures(rec) == ("1.80", "0.39", "1.41")
    # Short prefixes are below the provider's cacheable minimum.
    short = PrefixRow("rag", "anthropic", "claude-sonnet-4-5", "p2", 300, 30, 300_000, "a", "b")
    assert not analyses.prompt_caching(data(prefixes=[short]), CATALOGUE)


def test_response_caching_keeps_one_call_per_distinct_prompt() -> None:
    # Prompt A: 101 calls x $0.01; prompt B: 51 x $0.02 -> $2.03, of which $0.03 remains.
    rows = [
        DuplicateRow("faq", "openai", "gpt-4o-mini", "A", 101, 1_010_000_000, "f1", "f9"),
        DuplicateRow("faq", "openai", "gpt-4o-mini", "B", 51, 1_020_000_000, "f2", "f8"),
    ]
    [rec] = analyses.response_caching(data(duplicates=rows), CATALOGUE)
    assert figures(rec) == ("2.03", "0.03", "2.00")
    assert rec.evidence["repeated_calls"] == 150
    few = [DuplicateRow("faq", "openai", "gpt-4o-mini", "A", 10, 10_000_000, "f1", "f9")]
    assert not analyses.response_caching(data(duplicates=few), CATALOGUE)


def test_batch_api_only_for_workloads_no_user_waits_for() -> None:
    offline = group("nightly", "openai", "gpt-4.1", 200, "40.00", with_user=0)
    interactive = group("chat", "openai", "gpt-4.1", 200, "40.00", with_user=1)
    [rec] = analyses.batch_api(data(offline, interactive), CATALOGUE)
    assert (rec.workload, figures(rec)) == ("nightly", ("40.00", "20.00", "20.00"))


def test_prompt_trimming_assumes_a_quarter_of_uncached_input() -> None:
    # gpt-4.1: 1M input tokens x $2.00 = $2.00 over 100 calls (10k each, 50x the output).
    tokens = Tokens(input=1_000_000, output=20_000)
    [rec] = analyses.prompt_trimming(
        data(group("research", "openai", "gpt-4.1", 100, "2.16", tokens=tokens)), CATALOGUE
    )
    assert figures(rec) == ("2.00", "1.50", "0.50")


def test_error_waste_is_the_whole_cost_of_failed_calls() -> None:
    errors = group("agent", "openai", "gpt-4o", 30, "3.00", status="error")
    timeouts = group("agent", "openai", "gpt-4o", 12, "1.20", status="timeout")
    fine = group("agent", "openai", "gpt-4o", 500, "50.00")
    [rec] = analyses.error_waste(data(errors, timeouts, fine), CATALOGUE)
    assert figures(rec) == ("4.20", "0.00", "4.20")
    assert rec.evidence["by_status"] == {"error": 30, "timeout": 12}


def test_projection_scales_a_shorter_window_to_a_month() -> None:
    fortnight = Window(START, START + timedelta(days=15))
    errors = group("agent", "openai", "gpt-4o", 30, "3.00", status="error")
    [rec] = analyses.error_waste(data(errors, window=fortnight), CATALOGUE)
    assert rec.current_monthly_usd == Decimal("6.00")


def test_breakdown_orders_by_cost_and_reports_the_trend() -> None:
    days = [DayRow("2026-10-01", 10, 1_000_000_000), DayRow("2026-10-02", 10, 3_000_000_000)]
    breakdown = analyses.spend_breakdown(
        data(
            group("a", "openai", "gpt-4o", 10, "1.00"),
            group("b", "openai", "gpt-4o", 10, "3.00"),
            days=days,
        )
    )
    assert breakdown.total_usd == Decimal("4.00")
    assert [w["workload"] for w in breakdown.by_workload] == ["b", "a"]
    assert breakdown.by_model == [
        {"model": "openai/gpt-4o", "calls": 20, "cost_usd": "4", "share": "100.0"}
    ]
    assert breakdown.trend_percent == Decimal("200.0")


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
