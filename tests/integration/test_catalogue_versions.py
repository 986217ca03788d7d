"""A subscription keeps the prices of the catalogue it was bought under until its plan
changes (grandfathering), in-process on the embedded default with a clock the test drives.

The earlier catalogue here (Early at $79 instead of today's $99) is test data: a version
sold before, which Apex must keep honouring."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import httpx
import pytest

from apex.billing import service
from apex.billing.plans import CATALOGUE_VERSION, CATALOGUES, PLANS
from apex.billing.repository import InvoiceRepository, SubscriptionEventRepository
from apex.identity.models import Tier
from apex.kit.clock import FrozenClock
from tests.integration.conftest import in_process_app
from tests.integration.critical.conftest import bearer, signup_async

OLD = "2025-06-01"
T0 = datetime(2026, 1, 10, 9, 0, tzinfo=UTC)


def prorated(monthly_cents: int, remaining_s: int, period_s: int) -> int:
    return int(
        (Decimal(monthly_cents) * remaining_s / period_s).quantize(Decimal(1), ROUND_HALF_UP)
    )


async def test_a_subscription_keeps_its_catalogue_until_the_plan_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    early_at_79 = dataclasses.replace(PLANS[Tier.EARLY], base_fee_usd=Decimal(79))
    monkeypatch.setitem(CATALOGUES, OLD, {**PLANS, Tier.EARLY: early_at_79})
    clock = FrozenClock(T0)
    async with in_process_app(tmp_path, clock) as app:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://apex.test") as http:
            account = await signup_async(http)
            auth = bearer(account)
            org = uuid.UUID(account.json()["organization_id"])
            database = app.state.database
            no_tax = Decimal(0)
            async with database.unit_of_work() as session:  # bought under the old catalogue
                await service.complete_checkout(
                    session, org, "early", "cus_grandfathered", tax_rate=no_tax, now=T0
                )
                subscription = await service.subscription_of(session, org)
                assert subscription is not None
                subscription.catalogue_version = OLD
                period_end = subscription.period_end

            async with database.unit_of_work() as session:
                renewal = await service.close_period(session, org, tax_rate=no_tax, now=period_end)
                assert renewal is not None
                lines = await InvoiceRepository(session).lines(renewal.id)
            assert [(line.kind, line.amount_cents) for line in lines] == [("base_fee", 7_900)]
            shown = (await http.get("/api/v1/billing/subscription", headers=auth)).json()
            assert (shown["monthly_fee_usd"], shown["catalogue_version"]) == ("79.00", OLD)

            # Upgrading mid-period: the unused time is credited at the price paid ($79), the
            # rest charged at today's Mid; from then on, today's catalogue.
            async with database.unit_of_work() as session:
                current = await service.subscription_of(session, org)
                assert current is not None
                start, end = current.period_start, current.period_end
                now = start + (end - start) / 3
                _, upgrade = await service.change_plan(
                    session, org, "mid", tax_rate=no_tax, now=now
                )
                assert upgrade is not None
                lines = await InvoiceRepository(session).lines(upgrade.id)
                events = await SubscriptionEventRepository(session).of(org)
            remaining, period = int((end - now).total_seconds()), int((end - start).total_seconds())
            assert [line.amount_cents for line in lines] == [
                -prorated(7_900, remaining, period), prorated(49_900, remaining, period),
            ]  # fmt: skip
            assert [(e.kind, e.mrr_before_cents, e.mrr_after_cents) for e in events] == [
                ("subscribed", 0, 9_900),  # bought at today's $99, then moved back in time
                ("renewed", 7_900, 7_900),
                ("upgraded", 7_900, 49_900),
            ]
            shown = (await http.get("/api/v1/billing/subscription", headers=auth)).json()
            assert (shown["monthly_fee_usd"], shown["catalogue_version"]) == (
                "499.00", CATALOGUE_VERSION,
            )  # fmt: skip
