"""How a saving is verified and measured: the rules, with no I/O (docs/billing.md).

A finding is about a workload. Adopting it takes the workload's **baseline**: its cost per
priced call, error rate and output tokens per successful call over the 14 days before.
The 7 days after adoption are its **verification window**: the saving is verified when the
workload's cost per call went down, its error rate did not rise by more than 2 points and
its answers did not shrink below 70 % of their length (the quality signals usage records
carry), on at least 50 priced calls each side. From then on, for a year, every billed
period measures the saving again: (baseline cost per call - actual cost per call) x the
period's priced calls, never below zero.

Several findings adopted on one workload each claim only their own part of its drop: a
finding's saving per call stops at the baseline of the next one adopted after it (whose
own saving starts there), so the workload's saving is counted once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from apex.findings.models import FindingStatus
from apex.usage.models import NANOS_PER_USD
from apex.usage.rollups import WorkloadUsage
from apex.usage.spend import Window, hour_ceiling, hour_floor

BASELINE_DAYS = 14
VERIFICATION_DAYS = 7
SHARED_FOR_DAYS = 365
MIN_CALLS = 50
MAX_ERROR_RATE_RISE = Decimal("0.02")
MIN_OUTPUT_RATIO = Decimal("0.7")


@dataclass(frozen=True, slots=True)
class Windows:
    baseline: Window
    verification: Window


def windows_for(adopted_at: datetime) -> Windows:
    """Whole UTC hours: the baseline ends at the hour adoption fell in, measurement starts
    at the next whole hour (the hour of the change itself is neither)."""
    start = hour_ceiling(adopted_at)
    end = hour_floor(adopted_at)
    return Windows(
        baseline=Window(end - timedelta(days=BASELINE_DAYS), end),
        verification=Window(start, start + timedelta(days=VERIFICATION_DAYS)),
    )


def cost_per_call_nanos(usage: WorkloadUsage) -> Decimal | None:
    if not usage.priced_calls:
        return None
    return Decimal(usage.cost_nanos) / usage.priced_calls


def error_rate(usage: WorkloadUsage) -> Decimal | None:
    return Decimal(usage.failed_calls) / usage.calls if usage.calls else None


def output_per_call(usage: WorkloadUsage) -> Decimal | None:
    return Decimal(usage.ok_output_tokens) / usage.ok_calls if usage.ok_calls else None


def _usd(nanos: Decimal | int) -> str:
    return str((Decimal(nanos) / NANOS_PER_USD).quantize(Decimal("0.000001")))


def _ratio(value: Decimal | None) -> str | None:
    return None if value is None else str(value.quantize(Decimal("0.0001")))


def describe(usage: WorkloadUsage) -> dict[str, Any]:
    """The reading as evidence (JSON): what the verdict and the invoice line rest on."""
    per_call = cost_per_call_nanos(usage)
    return {
        "window": {"start": usage.window.start.isoformat(), "end": usage.window.end.isoformat()},
        "calls": usage.calls,
        "priced_calls": usage.priced_calls,
        "cost_usd": _usd(usage.cost_nanos),
        "cost_per_call_nanos": None if per_call is None else str(per_call),
        "cost_per_call_usd": None if per_call is None else _usd(per_call),
        "error_rate": _ratio(error_rate(usage)),
        "output_tokens_per_call": _ratio(output_per_call(usage)),
    }


def quality_problem(before: WorkloadUsage, after: WorkloadUsage) -> str | None:
    """What got worse, if anything: errors up more than 2 points, answers below 70 %."""
    errors_before, errors_after = error_rate(before), error_rate(after)
    if (
        errors_before is not None
        and errors_after is not None
        and errors_after - errors_before > MAX_ERROR_RATE_RISE
    ):
        return (
            f"quality_regressed: the error rate rose from {errors_before:.1%} to {errors_after:.1%}"
        )
    output_before, output_after = output_per_call(before), output_per_call(after)
    if (
        output_before
        and output_after is not None
        and output_after < output_before * MIN_OUTPUT_RATIO
    ):
        return (
            f"quality_regressed: answers shrank from {output_before:.0f} to "
            f"{output_after:.0f} output tokens a call"
        )
    return None


def verdict(before: WorkloadUsage, after: WorkloadUsage) -> tuple[FindingStatus, str | None]:
    """Verified, or not realised with the reason."""
    if before.priced_calls < MIN_CALLS or after.priced_calls < MIN_CALLS:
        return FindingStatus.NOT_REALISED, (
            f"insufficient_data: {before.priced_calls} priced calls before adoption and "
            f"{after.priced_calls} after; {MIN_CALLS} each are needed"
        )
    problem = quality_problem(before, after)
    if problem:
        return FindingStatus.NOT_REALISED, problem
    cost_before, cost_after = cost_per_call_nanos(before), cost_per_call_nanos(after)
    assert cost_before is not None
    assert cost_after is not None
    if cost_after >= cost_before:
        return FindingStatus.NOT_REALISED, (
            f"no_saving: ${_usd(cost_before)} a call before adoption, ${_usd(cost_after)} after"
        )
    return FindingStatus.VERIFIED, None


def saving_nanos(baseline: Decimal, floor: Decimal | None, actual: WorkloadUsage) -> int:
    """(baseline - max(actual, floor)) per priced call x the priced calls, never below 0,
    rounded half up to the nanodollar. `floor`: the next adopted finding's baseline."""
    per_call = cost_per_call_nanos(actual)
    if per_call is None:
        return 0
    lower = per_call if floor is None else max(per_call, floor)
    saved = max(Decimal(0), baseline - lower) * actual.priced_calls
    return int(saved.to_integral_value(ROUND_HALF_UP))
