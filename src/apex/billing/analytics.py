"""Revenue analytics, computed from the subscription history alone (exact, replayable).

Each `SubscriptionEvent` carries the organisation's MRR before and after it. Over a period
[start, end):
- MRR at a moment: the sum of every organisation's MRR after its last event before it;
  ARR is 12 x MRR; ARPA is MRR over the organisations paying at that moment.
- Movements, one per event that changed an organisation's MRR inside the period:
  new (0 → x, its first paid MRR ever), reactivation (0 → x after an earlier one),
  expansion (x → y > x), contraction (x → 0 < y < x), churn (x → 0).
  new + reactivation + expansion - contraction - churn = MRR(end) - MRR(start).
- Trial conversion: trials started in the period, and how many of those organisations
  went on to pay (by `end`).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from apex.billing.models import SubscriptionEvent, SubscriptionEventKind


@dataclass(slots=True)
class Movements:
    new: int = 0
    reactivation: int = 0
    expansion: int = 0
    contraction: int = 0
    churn: int = 0
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str, cents: int) -> None:
        setattr(self, kind, getattr(self, kind) + cents)
        self.counts[kind] = self.counts.get(kind, 0) + 1


@dataclass(frozen=True, slots=True)
class RevenueMetrics:
    start: datetime
    end: datetime
    mrr_start_cents: int
    mrr_end_cents: int
    paying_accounts: int
    movements: Movements
    trials_started: int
    trials_converted: int

    @property
    def arr_cents(self) -> int:
        return 12 * self.mrr_end_cents

    @property
    def arpa_cents(self) -> Decimal:
        if not self.paying_accounts:
            return Decimal(0)
        return Decimal(self.mrr_end_cents) / Decimal(self.paying_accounts)

    @property
    def conversion_rate(self) -> Decimal | None:
        if not self.trials_started:
            return None
        return Decimal(self.trials_converted) / Decimal(self.trials_started)


def _mrr_at(events: Iterable[SubscriptionEvent], moment: datetime) -> dict[uuid.UUID, int]:
    mrr: dict[uuid.UUID, int] = {}
    for event in events:
        if event.occurred_at < moment:
            mrr[event.organization_id] = event.mrr_after_cents
    return mrr


def _movement(event: SubscriptionEvent, paid_before: bool) -> str | None:
    before, after = event.mrr_before_cents, event.mrr_after_cents
    if before == after:
        return None
    if before == 0:
        return "reactivation" if paid_before else "new"
    if after == 0:
        return "churn"
    return "expansion" if after > before else "contraction"


def revenue(events: Sequence[SubscriptionEvent], start: datetime, end: datetime) -> RevenueMetrics:
    """The metrics of [start, end) from every event before `end`, in the order they happened."""
    ordered = sorted(events, key=lambda e: (e.occurred_at, e.id))
    movements = Movements()
    has_paid: set[uuid.UUID] = set()
    trials: set[uuid.UUID] = set()
    converted: set[uuid.UUID] = set()
    for event in ordered:
        if event.occurred_at >= end:
            break
        inside = event.occurred_at >= start
        kind = _movement(event, event.organization_id in has_paid)
        if inside and kind is not None:
            movements.add(kind, abs(event.mrr_after_cents - event.mrr_before_cents))
        if inside and event.kind == SubscriptionEventKind.TRIAL_STARTED:
            trials.add(event.organization_id)
        if event.organization_id in trials and event.mrr_after_cents > 0:
            converted.add(event.organization_id)
        if event.mrr_after_cents > 0:
            has_paid.add(event.organization_id)
    at_end = _mrr_at(ordered, end)
    return RevenueMetrics(
        start=start,
        end=end,
        mrr_start_cents=sum(_mrr_at(ordered, start).values()),
        mrr_end_cents=sum(at_end.values()),
        paying_accounts=sum(1 for cents in at_end.values() if cents > 0),
        movements=movements,
        trials_started=len(trials),
        trials_converted=len(converted),
    )
