"""The rules that verify and measure a finding's saving (apex.findings.verification).
Expected values are worked out by hand here."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from apex.findings.models import FindingStatus
from apex.findings.verification import saving_nanos, verdict, windows_for
from apex.usage.rollups import WorkloadUsage
from apex.usage.spend import Window

ANY = Window(datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 11, 2, tzinfo=UTC))


def usage(
    calls: int, cost_per_call: int, *, failed: int = 0, output: int = 100, unpriced: int = 0
) -> WorkloadUsage:
    """`calls` calls of `cost_per_call` nanodollars, `failed` of them failed, `output`
    tokens per successful call; `unpriced` more calls of unknown cost."""
    return WorkloadUsage(
        window=ANY,
        calls=calls + unpriced,
        priced_calls=calls,
        cost_nanos=calls * cost_per_call,
        failed_calls=failed,
        ok_output_tokens=(calls + unpriced - failed) * output,
    )


def test_windows_are_whole_hours_around_the_adoption() -> None:
    windows = windows_for(datetime(2026, 11, 26, 13, 20, tzinfo=UTC))
    assert windows.baseline == Window(
        datetime(2026, 11, 12, 13, tzinfo=UTC), datetime(2026, 11, 26, 13, tzinfo=UTC)
    )
    assert windows.verification == Window(
        datetime(2026, 11, 26, 14, tzinfo=UTC), datetime(2026, 12, 3, 14, tzinfo=UTC)
    )
    on_the_hour = windows_for(datetime(2026, 11, 26, 13, tzinfo=UTC))
    assert on_the_hour.baseline.end == on_the_hour.verification.start


@pytest.mark.parametrize(
    ("before", "after", "status", "reason"),
    [
        (usage(200, 1000), usage(200, 400), FindingStatus.VERIFIED, None),
        (usage(49, 1000), usage(200, 400), FindingStatus.NOT_REALISED, "insufficient_data"),
        (usage(200, 1000), usage(49, 400, unpriced=100), FindingStatus.NOT_REALISED,
         "insufficient_data"),  # unpriced calls do not count
        (usage(200, 1000), usage(200, 1000), FindingStatus.NOT_REALISED, "no_saving"),
        (usage(200, 1000), usage(200, 1001), FindingStatus.NOT_REALISED, "no_saving"),
        # errors 1% -> 3%: 2 points is allowed; 1% -> 3.5% is not
        (usage(200, 1000, failed=2), usage(200, 400, failed=6), FindingStatus.VERIFIED, None),
        (usage(200, 1000, failed=2), usage(200, 400, failed=7), FindingStatus.NOT_REALISED,
         "quality_regressed"),
        # answers at 70% of their length are allowed; at 69% they are not
        (usage(200, 1000), usage(200, 400, output=70), FindingStatus.VERIFIED, None),
        (usage(200, 1000), usage(200, 400, output=69), FindingStatus.NOT_REALISED,
         "quality_regressed"),
    ],
)  # fmt: skip
def test_verdict(
    before: WorkloadUsage, after: WorkloadUsage, status: FindingStatus, reason: str | None
) -> None:
    found, why = verdict(before, after)
    assert found == status
    assert (why.split(":")[0] if why else None) == reason


def test_saving_is_per_priced_call_and_never_negative() -> None:
    assert saving_nanos(Decimal(1000), None, usage(300, 400)) == 300 * 600
    assert saving_nanos(Decimal(1000), None, usage(300, 1200)) == 0
    assert saving_nanos(Decimal(1000), None, usage(0, 0, unpriced=50)) == 0
    # 2 calls at 333 and 1 at 334: 1000/3 a call; the saving of 3 calls is exactly 2000.
    mixed = WorkloadUsage(ANY, 3, 3, 1000, 0, 300)
    assert saving_nanos(Decimal(1000), None, mixed) == 2000


def test_findings_on_one_workload_count_its_saving_once() -> None:
    """A adopted at 1000 a call, B later at 600; the workload now costs 450: A is credited
    1000 - 600, B 600 - 450, together the workload's 1000 - 450."""
    now = usage(100, 450)
    first = saving_nanos(Decimal(1000), Decimal(600), now)
    second = saving_nanos(Decimal(600), None, now)
    assert (first, second) == (40_000, 15_000)
    assert first + second == 100 * (1000 - 450)
    # If the workload went back above B's baseline, A keeps only what remains of its drop.
    assert saving_nanos(Decimal(1000), Decimal(600), usage(100, 800)) == 100 * 200
