"""The pure rules of customer alerts (apex.alerts): what a rule measures, quiet hours, the
retry schedule and which webhook URLs are refused. Expected values are worked out by hand."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from apex.alerts.delivery import DeliveryRefused, backoff_seconds, check_url
from apex.alerts.models import AlertKind, AlertRule
from apex.alerts.service import anomaly, in_quiet_hours, measure, quota_used, release_time
from apex.settings import Settings
from apex.usage.spend import WindowTotals


def rule(kind: AlertKind = AlertKind.SPEND, **fields: object) -> AlertRule:
    return AlertRule(kind=kind.value, threshold=Decimal(10), window_minutes=60,
                     min_calls=fields.pop("min_calls", 20), **fields)  # fmt: skip


def test_spend_is_exact_dollars_from_nanodollars() -> None:
    # 3 calls of $0.333333333 each: $0.999999999, kept to the micro-dollar (rounded half even).
    assert measure(rule(), WindowTotals(3, 0, 999_999_999)) == Decimal("1.000000")
    assert measure(rule(), WindowTotals(100, 0, 12_500_000_000)) == Decimal("12.500000")
    assert measure(rule(), WindowTotals(0, 0, 0)) == Decimal("0.000000")


def test_error_rate_is_a_percent_and_needs_enough_calls() -> None:
    errors = rule(AlertKind.ERROR_RATE)
    assert measure(errors, WindowTotals(40, 3, 0)) == Decimal("7.500000")  # 3 of 40
    assert measure(errors, WindowTotals(19, 19, 0)) is None  # under min_calls: not judged
    assert measure(rule(AlertKind.ERROR_RATE, min_calls=0), WindowTotals(0, 0, 0)) is None
    assert measure(errors, WindowTotals(3000, 1000, 0)) == Decimal("33.333333")


@pytest.mark.parametrize(
    ("start", "end", "hour", "quiet"),
    [
        (22, 7, 23, True), (22, 7, 3, True), (22, 7, 7, False), (22, 7, 21, False),
        (1, 5, 1, True), (1, 5, 4, True), (1, 5, 5, False), (1, 5, 0, False),
        (6, 6, 6, False),  # an empty range is no quiet hours
    ],
)  # fmt: skip
def test_quiet_hours_wrap_midnight(start: int, end: int, hour: int, quiet: bool) -> None:
    instant = datetime(2026, 11, 26, hour, 30, tzinfo=UTC)
    assert in_quiet_hours(rule(quiet_start_hour=start, quiet_end_hour=end), instant) is quiet


def test_a_notice_queued_in_quiet_hours_waits_for_their_end() -> None:
    night = rule(quiet_start_hour=22, quiet_end_hour=7)
    late = datetime(2026, 11, 26, 23, 15, tzinfo=UTC)
    early = datetime(2026, 11, 27, 3, 0, tzinfo=UTC)
    noon = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    assert release_time(night, late) == datetime(2026, 11, 27, 7, 0, tzinfo=UTC)
    assert release_time(night, early) == datetime(2026, 11, 27, 7, 0, tzinfo=UTC)
    assert release_time(night, noon) == noon
    assert release_time(rule(), late) == late


def test_retries_double_up_to_an_hour() -> None:
    settings = Settings(alert_retry_base_seconds=30)
    waits = [backoff_seconds(settings, attempt) for attempt in range(1, 10)]
    assert waits == [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]
    assert backoff_seconds(settings, 500) == 3600


@pytest.mark.parametrize(
    "url",
    [
        "ftp://hooks.example.com/x", "hooks.example.com/x", "https://user:pw@hooks.example.com/",
        "http://127.0.0.1:8080/hook", "http://localhost/hook", "http://10.0.0.5/hook",
        "http://192.168.1.1/", "http://169.254.169.254/latest/meta-data", "http://[::1]/",
        "http://0.0.0.0/", "http://100.64.0.1/",
    ],
)  # fmt: skip
def test_webhooks_into_the_private_network_are_refused(url: str) -> None:
    with pytest.raises(DeliveryRefused):
        check_url(url, allow_private=False)


def test_public_and_allowed_private_webhooks_pass() -> None:
    check_url("https://hooks.example.com/apex", allow_private=False)
    check_url("https://93.184.216.34/apex", allow_private=False)
    check_url("http://127.0.0.1:8080/hook", allow_private=True)
    with pytest.raises(DeliveryRefused):  # a scheme is never allowed
        check_url("file:///etc/passwd", allow_private=True)


def test_spend_anomaly_is_a_multiple_of_the_usual_window() -> None:
    # A week of baseline, 84 windows of 2 hours, $8.40 in all: $0.10 a window is usual.
    baseline = WindowTotals(840, 0, 8_400_000_000)
    assert anomaly(WindowTotals(10, 0, 350_000_000), baseline, 84) == Decimal("3.500000")
    assert anomaly(WindowTotals(10, 0, 0), baseline, 84) == Decimal("0.000000")
    assert anomaly(WindowTotals(10, 0, 350_000_000), WindowTotals(0, 0, 0), 84) is None


def test_quota_used_is_a_percent_of_the_plan() -> None:
    assert quota_used(80_000, 100_000) == Decimal("80.000000")
    assert quota_used(1, 3) == Decimal("33.333333")
    assert quota_used(5_000_000, None) is None  # a plan without a quota
