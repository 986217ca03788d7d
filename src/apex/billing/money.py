"""Money arithmetic: integer cents in storage and at the gateway, `Decimal` dollars elsewhere.

Rounding (documented in docs/billing.md): every invoice line is rounded on its own to the
cent, half up (ROUND_HALF_UP), and the total is the sum of the rounded lines; tax is
computed on that subtotal and rounded the same way. Proration is the line's monthly price
times the seconds left in the period over the period's seconds.
"""

from __future__ import annotations

import calendar
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

CENT = Decimal("0.01")
MILLION = Decimal(1_000_000)


def to_cents(amount: Decimal) -> int:
    return int((amount / CENT).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def half_up_cents(amount_usd: Decimal) -> int:
    """Dollars (any precision) to whole cents, half up."""
    return int((amount_usd * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def dollars(cents: int) -> Decimal:
    return (Decimal(cents) * CENT).quantize(CENT)


def prorated_cents(monthly_cents: int, remaining: timedelta, period: timedelta) -> int:
    """The share of a month's price for the time left in the period, to the cent."""
    if period.total_seconds() <= 0:
        return 0
    share = (
        Decimal(monthly_cents)
        * Decimal(int(remaining.total_seconds()))
        / Decimal(int(period.total_seconds()))
    )
    return int(share.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def tax_cents(subtotal_cents: int, rate: Decimal) -> int:
    return int((Decimal(subtotal_cents) * rate).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def add_month(moment: datetime) -> datetime:
    """The same day and time next month (the last day of a shorter month)."""
    year, month = (moment.year + 1, 1) if moment.month == 12 else (moment.year, moment.month + 1)
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)
