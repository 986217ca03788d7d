"""Billing's pure rules: calendar months, rounding, proration, the webhook signature, the
revenue movements. Expected values are worked out by hand here."""

from __future__ import annotations

import hashlib
import hmac
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from apex.billing.analytics import revenue
from apex.billing.gateway import BadSignature, verify_signature
from apex.billing.models import SubscriptionEvent
from apex.billing.money import add_month, prorated_cents, tax_cents, to_cents

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
SECRET = "whsec_unit"


@pytest.mark.parametrize(
    ("start", "next_start"),
    [
        (datetime(2026, 1, 31, 9, tzinfo=UTC), datetime(2026, 2, 28, 9, tzinfo=UTC)),
        (datetime(2028, 1, 31, 9, tzinfo=UTC), datetime(2028, 2, 29, 9, tzinfo=UTC)),
        (datetime(2026, 12, 15, 9, tzinfo=UTC), datetime(2027, 1, 15, 9, tzinfo=UTC)),
    ],
)
def test_a_period_is_a_calendar_month(start: datetime, next_start: datetime) -> None:
    assert add_month(start) == next_start


def test_money_is_rounded_half_up_to_the_cent() -> None:
    assert to_cents(Decimal("0.005")) == 1
    assert to_cents(Decimal("0.0049")) == 0
    assert tax_cents(999, Decimal("0.2")) == 200  # 199.8
    assert tax_cents(1_002, Decimal("0.125")) == 125  # 125.25


def test_proration_is_by_the_second() -> None:
    period = timedelta(days=30)
    assert prorated_cents(49_900, timedelta(days=15), period) == 24_950
    # $2,500 for 1 s of a 30-day month: 250000 / 2592000 = 0.096 cent → 0
    assert prorated_cents(250_000, timedelta(seconds=1), period) == 0
    # 10 h of 30 days of $499: 49900 x 36000 / 2592000 = 693.06 → 693
    assert prorated_cents(49_900, timedelta(hours=10), period) == 693


def signed(body: bytes, at: int, secret: str = SECRET) -> str:
    mac = hmac.new(secret.encode(), f"{at}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={at},v1={mac}"


def test_a_webhook_signature_is_checked_against_the_body_the_secret_and_the_time() -> None:
    body = b'{"id": "evt_1"}'
    at = int(NOW.timestamp())
    verify_signature(body, signed(body, at), SECRET, NOW)
    verify_signature(body, f"t={at},v1=00ff,{signed(body, at).split(',')[1]}", SECRET, NOW)
    for header, sent in [
        (signed(body, at, "whsec_other"), body),
        (signed(body, at), b'{"id": "evt_2"}'),
        (signed(body, at - 301), body),
        (signed(body, at + 301), body),
        ("v1=abc", body),
        (f"t=x,v1={signed(body, at).split('v1=')[1]}", body),
    ]:
        with pytest.raises(BadSignature):
            verify_signature(sent, header, SECRET, NOW)


def event(
    org: uuid.UUID, before: int, after: int, hours: int, kind: str = "upgraded"
) -> SubscriptionEvent:
    return SubscriptionEvent(
        id=uuid.uuid4(), organization_id=org, kind=kind, from_tier="x", to_tier="y",
        status="active", mrr_before_cents=before, mrr_after_cents=after,
        occurred_at=NOW + timedelta(hours=hours),
    )  # fmt: skip


def test_revenue_movements_add_up_to_the_change_in_mrr() -> None:
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    history = [
        event(a, 0, 9_900, 0, "subscribed"),  # before the period: MRR at start 99
        event(a, 9_900, 49_900, 2),  # expansion 400
        event(b, 0, 0, 3, "trial_started"),
        event(b, 0, 9_900, 4, "subscribed"),  # new 99, a converted trial
        event(a, 49_900, 0, 5, "canceled"),  # churn 499
        event(c, 0, 250_000, 6, "subscribed"),  # new 2,500
        event(c, 250_000, 49_900, 7, "downgraded"),  # contraction 2,001
        event(a, 0, 9_900, 8, "subscribed"),  # reactivation 99
        event(c, 49_900, 0, 30, "canceled"),  # after the period: not counted
    ]
    metrics = revenue(history, NOW + timedelta(hours=1), NOW + timedelta(hours=10))
    moved = metrics.movements
    assert (moved.new, moved.expansion, moved.contraction, moved.churn, moved.reactivation) == (
        9_900 + 250_000, 40_000, 200_100, 49_900, 9_900)  # fmt: skip
    assert (metrics.mrr_start_cents, metrics.mrr_end_cents) == (9_900, 9_900 + 9_900 + 49_900)
    net = moved.new + moved.reactivation + moved.expansion - moved.contraction - moved.churn
    assert net == metrics.mrr_end_cents - metrics.mrr_start_cents
    assert (metrics.trials_started, metrics.trials_converted, metrics.paying_accounts) == (1, 1, 3)


def test_an_unknown_catalogue_version_is_refused_by_name() -> None:
    from apex.billing.plans import CATALOGUE_VERSION, plan_for

    assert plan_for("mid", CATALOGUE_VERSION).base_fee_usd == Decimal(499)  # the price list
    with pytest.raises(ValueError, match="unknown catalogue version '1999-01-01'"):
        plan_for("mid", "1999-01-01")
