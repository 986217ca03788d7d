"""Subscriptions, their history, invoices, payments and the payment gateway's events.

Money is stored as integer cents (exact on every backend, as the gateway counts it) and is
`Decimal` dollars everywhere else (`apex.billing.money`).
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from apex.billing.plans import CATALOGUE_VERSION
from apex.kit.models import RecordModel, enum_check


class SubscriptionStatus(enum.StrEnum):
    TRIALING = "trialing"
    ACTIVE = "active"
    PAST_DUE = "past_due"
    CANCELED = "canceled"


class Subscription(RecordModel):
    """An organisation's paid plan (no row: the Free plan). One per organisation; its
    changes are appended to `subscription_events`."""

    __tablename__ = "subscriptions"
    __table_args__ = (CheckConstraint(enum_check("status", SubscriptionStatus), name="status"),)

    organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), unique=True
    )
    tier: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20))
    period_start: Mapped[datetime]
    period_end: Mapped[datetime] = mapped_column(index=True)
    scheduled_tier: Mapped[str | None] = mapped_column(
        String(20), comment="The plan it changes to at period_end (a downgrade)."
    )
    cancel_at_period_end: Mapped[bool] = mapped_column(default=False)
    gateway_customer_id: Mapped[str | None] = mapped_column(String(100))
    catalogue_version: Mapped[str] = mapped_column(
        String(20),
        default=CATALOGUE_VERSION,
        server_default=CATALOGUE_VERSION,
        comment="The plan catalogue its prices come from (apex.billing.plans.CATALOGUES).",
    )
    checkout_at: Mapped[datetime | None] = mapped_column(
        comment="When the gateway completed the checkout last applied (older ones are not)."
    )


class SubscriptionEventKind(enum.StrEnum):
    TRIAL_STARTED = "trial_started"
    SUBSCRIBED = "subscribed"  # paid, from Free or a trial
    UPGRADED = "upgraded"
    DOWNGRADE_SCHEDULED = "downgrade_scheduled"
    DOWNGRADED = "downgraded"
    RENEWED = "renewed"
    PAST_DUE = "past_due"
    RECOVERED = "recovered"  # past_due → active once an invoice is paid
    CANCEL_SCHEDULED = "cancel_scheduled"
    REACTIVATED = "reactivated"
    CANCELED = "canceled"  # back on Free


class SubscriptionEvent(RecordModel):
    """One change of a subscription, never updated: revenue analytics read only these."""

    __tablename__ = "subscription_events"
    __table_args__ = (
        CheckConstraint(enum_check("kind", SubscriptionEventKind), name="kind"),
        Index("ix_subscription_events_occurred_at", "occurred_at"),
    )

    organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(30))
    from_tier: Mapped[str] = mapped_column(String(20))
    to_tier: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20), comment="The status after the change.")
    mrr_before_cents: Mapped[int] = mapped_column(BigInteger)
    mrr_after_cents: Mapped[int] = mapped_column(BigInteger)
    occurred_at: Mapped[datetime]


class InvoiceStatus(enum.StrEnum):
    OPEN = "open"  # finalized: lines and total never change again
    PAID = "paid"
    UNCOLLECTIBLE = "uncollectible"  # dunning gave up


class Invoice(RecordModel):
    __tablename__ = "invoices"
    __table_args__ = (
        CheckConstraint(enum_check("status", InvoiceStatus), name="status"),
        UniqueConstraint("organization_id", "number"),
        Index("ix_invoices_status_next_attempt_at", "status", "next_attempt_at"),
    )

    organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    number: Mapped[int] = mapped_column(comment="1, 2, ... per organisation.")
    reason: Mapped[str] = mapped_column(String(30))
    status: Mapped[str] = mapped_column(String(20))
    currency: Mapped[str] = mapped_column(String(3), default="usd")
    period_start: Mapped[datetime]
    period_end: Mapped[datetime]
    subtotal_cents: Mapped[int] = mapped_column(BigInteger)
    tax_rate: Mapped[str] = mapped_column(String(12), comment="A decimal fraction, e.g. 0.2.")
    tax_cents: Mapped[int] = mapped_column(BigInteger)
    total_cents: Mapped[int] = mapped_column(BigInteger)
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime | None]
    issued_at: Mapped[datetime]
    paid_at: Mapped[datetime | None]


class InvoiceLine(RecordModel):
    __tablename__ = "invoice_lines"

    invoice_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("invoices.id", ondelete="CASCADE"), index=True
    )
    position: Mapped[int]
    kind: Mapped[str] = mapped_column(String(30))
    description: Mapped[str] = mapped_column(Text)
    amount_cents: Mapped[int] = mapped_column(BigInteger)
    # Metered lines: how many tokens (usage, usage_adjustment: at a price a million) or runs
    # (agent_runs: at a price each), for which window of usage (whole UTC hours).
    quantity: Mapped[int | None] = mapped_column(BigInteger)
    unit_price: Mapped[str | None] = mapped_column(String(20))
    usage_start: Mapped[datetime | None]
    usage_end: Mapped[datetime | None]


class PaymentStatus(enum.StrEnum):
    PENDING = "pending"  # stored before the gateway is called; its outcome unknown
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REQUIRES_ACTION = "requires_action"  # the bank wants the customer (3-D Secure)


class Payment(RecordModel):
    """One attempt to collect an invoice. Its idempotency key is derived from the invoice
    and the attempt number and stored before the gateway is called, so a retry after a
    crash or a timeout sends the same key and the gateway charges at most once."""

    __tablename__ = "payments"
    __table_args__ = (
        CheckConstraint(enum_check("status", PaymentStatus), name="status"),
        UniqueConstraint("invoice_id", "attempt"),
    )

    invoice_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("invoices.id", ondelete="CASCADE"), index=True
    )
    organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    attempt: Mapped[int]
    idempotency_key: Mapped[str] = mapped_column(String(100), unique=True)
    amount_cents: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(20))
    gateway_payment_id: Mapped[str | None] = mapped_column(String(100), index=True)
    failure_code: Mapped[str | None] = mapped_column(String(100))


class RefundStatus(enum.StrEnum):
    PENDING = "pending"  # stored before the gateway is called; its outcome unknown
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class Refund(RecordModel):
    """Money given back on a paid invoice, by an operator. Stored (pending, with its
    idempotency key) before the gateway is called, like a payment: a retry after a crash
    sends the same key and the gateway refunds at most once."""

    __tablename__ = "refunds"
    __table_args__ = (
        CheckConstraint(enum_check("status", RefundStatus), name="status"),
        UniqueConstraint("invoice_id", "number"),
    )

    invoice_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("invoices.id", ondelete="CASCADE"), index=True
    )
    organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    number: Mapped[int] = mapped_column(comment="1, 2, ... per invoice.")
    idempotency_key: Mapped[str] = mapped_column(String(100), unique=True)
    amount_cents: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(20))
    gateway_payment_id: Mapped[str] = mapped_column(String(100))
    gateway_refund_id: Mapped[str | None] = mapped_column(String(100))
    failure_code: Mapped[str | None] = mapped_column(String(100))
    requested_by: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL")
    )


class GatewayEvent(RecordModel):
    """A webhook event from the payment gateway, stored once by its id: a redelivery finds
    it and changes nothing."""

    __tablename__ = "gateway_events"

    gateway_event_id: Mapped[str] = mapped_column(String(100), unique=True)
    type: Mapped[str] = mapped_column(String(100))
    created: Mapped[datetime] = mapped_column(comment="When the gateway created the event.")
