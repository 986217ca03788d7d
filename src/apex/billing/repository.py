"""All SQL of billing."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from apex.billing.models import (
    GatewayEvent,
    Invoice,
    InvoiceLine,
    InvoiceStatus,
    Payment,
    PaymentStatus,
    Refund,
    Subscription,
    SubscriptionEvent,
    SubscriptionStatus,
)
from apex.kit.ids import new_id
from apex.kit.repository import Repository
from apex.usage.spend import Window


class SubscriptionRepository(Repository[Subscription]):
    model = Subscription

    async def of(self, organization_id: uuid.UUID, *, lock: bool = False) -> Subscription | None:
        statement = select(Subscription).where(Subscription.organization_id == organization_id)
        if lock:
            statement = statement.with_for_update().execution_options(populate_existing=True)
        result: Subscription | None = await self.session.scalar(statement)
        return result

    async def due(self, now: datetime, limit: int = 100) -> Sequence[uuid.UUID]:
        """Organisations whose period has ended (renewal, trial end, scheduled change)."""
        statement = (
            select(Subscription.organization_id)
            .where(
                Subscription.period_end <= now,
                Subscription.status.in_([SubscriptionStatus.ACTIVE, SubscriptionStatus.TRIALING]),
            )
            .order_by(Subscription.period_end)
            .limit(limit)
        )
        return (await self.session.scalars(statement)).all()


class SubscriptionEventRepository(Repository[SubscriptionEvent]):
    model = SubscriptionEvent

    async def all_until(self, until: datetime) -> Sequence[SubscriptionEvent]:
        statement = (
            select(SubscriptionEvent)
            .where(SubscriptionEvent.occurred_at < until)
            .order_by(SubscriptionEvent.occurred_at, SubscriptionEvent.id)
        )
        return (await self.session.scalars(statement)).all()

    async def of(self, organization_id: uuid.UUID) -> Sequence[SubscriptionEvent]:
        statement = (
            select(SubscriptionEvent)
            .where(SubscriptionEvent.organization_id == organization_id)
            .order_by(SubscriptionEvent.occurred_at, SubscriptionEvent.id)
        )
        return (await self.session.scalars(statement)).all()


TOKEN_LINES = ("usage", "usage_adjustment")  # the lines that bill analysed tokens


@dataclass(frozen=True, slots=True)
class MeteredWindow:
    window: Window
    price: Decimal
    tokens: int
    cents: int


class InvoiceRepository(Repository[Invoice]):
    model = Invoice

    async def next_number(self, organization_id: uuid.UUID) -> int:
        """Callers hold the subscription's row lock, so numbers are handed out one at a time."""
        highest = await self.session.scalar(
            select(func.max(Invoice.number)).where(Invoice.organization_id == organization_id)
        )
        return int(highest or 0) + 1

    async def of(self, organization_id: uuid.UUID, invoice_id: uuid.UUID) -> Invoice | None:
        result: Invoice | None = await self.session.scalar(
            select(Invoice).where(
                Invoice.id == invoice_id, Invoice.organization_id == organization_id
            )
        )
        return result

    async def list_for(self, organization_id: uuid.UUID, limit: int = 100) -> Sequence[Invoice]:
        statement = (
            select(Invoice)
            .where(Invoice.organization_id == organization_id)
            .order_by(Invoice.number.desc())
            .limit(limit)
        )
        return (await self.session.scalars(statement)).all()

    async def lines(self, invoice_id: uuid.UUID) -> Sequence[InvoiceLine]:
        statement = (
            select(InvoiceLine)
            .where(InvoiceLine.invoice_id == invoice_id)
            .order_by(InvoiceLine.position)
        )
        return (await self.session.scalars(statement)).all()

    async def due_for_collection(self, now: datetime, limit: int = 100) -> Sequence[uuid.UUID]:
        statement = (
            select(Invoice.id)
            .where(Invoice.status == InvoiceStatus.OPEN, Invoice.next_attempt_at <= now)
            .order_by(Invoice.next_attempt_at)
            .limit(limit)
        )
        return (await self.session.scalars(statement)).all()

    async def metered_windows(self, organization_id: uuid.UUID) -> list[MeteredWindow]:
        """What was billed for each window of usage (its usage line and any adjustments since),
        for the last 12 windows."""
        statement = (
            select(
                InvoiceLine.usage_start, InvoiceLine.usage_end, InvoiceLine.unit_price,
                func.sum(InvoiceLine.quantity), func.sum(InvoiceLine.amount_cents),
            )
            .join(Invoice, Invoice.id == InvoiceLine.invoice_id)
            .where(Invoice.organization_id == organization_id,
                   InvoiceLine.kind.in_(TOKEN_LINES), InvoiceLine.usage_start.is_not(None))
            .group_by(InvoiceLine.usage_start, InvoiceLine.usage_end, InvoiceLine.unit_price)
            .order_by(InvoiceLine.usage_start.desc())
            .limit(12)
        )  # fmt: skip
        rows: Sequence[Any] = (await self.session.execute(statement)).all()
        return [
            MeteredWindow(Window(start, end), Decimal(price), int(tokens), int(cents))
            for start, end, price, tokens, cents in rows
        ]

    async def open_count(self, organization_id: uuid.UUID) -> int:
        count = await self.session.scalar(
            select(func.count()).where(
                Invoice.organization_id == organization_id, Invoice.status == InvoiceStatus.OPEN
            )
        )
        return int(count or 0)


class PaymentRepository(Repository[Payment]):
    model = Payment

    async def pending_for(self, invoice_id: uuid.UUID) -> Payment | None:
        result: Payment | None = await self.session.scalar(
            select(Payment).where(
                Payment.invoice_id == invoice_id, Payment.status == PaymentStatus.PENDING
            )
        )
        return result

    async def by_key(self, idempotency_key: str, *, lock: bool = False) -> Payment | None:
        statement = select(Payment).where(Payment.idempotency_key == idempotency_key)
        if lock:
            statement = statement.with_for_update().execution_options(populate_existing=True)
        result: Payment | None = await self.session.scalar(statement)
        return result

    async def of_invoice(self, invoice_id: uuid.UUID) -> Sequence[Payment]:
        statement = (
            select(Payment).where(Payment.invoice_id == invoice_id).order_by(Payment.attempt)
        )
        return (await self.session.scalars(statement)).all()


class GatewayEventRepository(Repository[GatewayEvent]):
    model = GatewayEvent

    async def record_once(self, event_id: str, kind: str, created: datetime) -> bool:
        """Store the event unless it is stored already; True when this call stored it. A
        concurrent delivery of the same event waits on the unique index, then finds it."""
        connection = await self.session.connection()
        insert = pg_insert if connection.dialect.name == "postgresql" else sqlite_insert
        values = {"id": new_id(), "gateway_event_id": event_id, "type": kind,
                  "created": created, "created_at": created, "updated_at": created}  # fmt: skip
        statement = (
            insert(GatewayEvent)
            .values(**values)
            .on_conflict_do_nothing(index_elements=["gateway_event_id"])
            .returning(GatewayEvent.gateway_event_id)
        )
        return (await self.session.scalar(statement)) is not None


class RefundRepository(Repository[Refund]):
    model = Refund

    async def of_invoice(self, invoice_id: uuid.UUID) -> Sequence[Refund]:
        statement = select(Refund).where(Refund.invoice_id == invoice_id).order_by(Refund.number)
        return (await self.session.scalars(statement)).all()
