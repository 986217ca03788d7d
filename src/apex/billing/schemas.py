"""Billing's request and response bodies. Money is `Decimal` dollars, never a float."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

from pydantic import BaseModel, ConfigDict, Field


class PlanOut(BaseModel):
    tier: str
    catalogue_version: str = Field(description="The catalogue on sale (its prices never change).")
    monthly_fee_usd: Decimal
    savings_share: Decimal
    analysed_tokens_per_million_usd: Decimal
    agent_run_usd: Decimal
    records_per_month: int | None
    agent_runs_per_day: int | None
    concurrent_agent_runs: int
    api_requests_per_hour: int | None
    websocket_messages_per_minute: int
    seats: int | None
    retention_days: int
    trial_days: int


class TierIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tier: str = Field(min_length=1, max_length=20, description="early, mid or enterprise.")


class CheckoutOut(BaseModel):
    id: str
    url: str = Field(description="The gateway's hosted page where the customer enters a card.")


class SubscriptionOut(BaseModel):
    organization_id: uuid.UUID
    tier: str
    status: str
    period_start: datetime | None
    period_end: datetime | None
    scheduled_tier: str | None
    cancel_at_period_end: bool
    card_on_file: bool
    monthly_fee_usd: Decimal = Field(description="At the prices of its catalogue_version.")
    catalogue_version: str = Field(
        description="The catalogue it was bought under: kept until the plan changes."
    )


class InvoiceLineOut(BaseModel):
    kind: str = Field(
        description="base_fee, proration, usage (analysed tokens of the window, in arrears), "
        "usage_adjustment (tokens of an earlier window that arrived after it was invoiced), "
        "agent_runs (runs that finished with a report in the window) or savings_share (the "
        "plan's share of a verified finding's measured saving)"
    )
    description: str
    amount_usd: Decimal
    quantity: int | None = Field(default=None, description="Tokens or runs, for metered lines.")
    unit_price_usd: Decimal | None = Field(
        default=None, description="A million tokens (usage lines), a run (agent_runs)."
    )
    usage_start: datetime | None = None
    usage_end: datetime | None = None


class PaymentOut(BaseModel):
    attempt: int
    status: str
    amount_usd: Decimal
    failure_code: str | None
    created_at: datetime


class RefundIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    amount_usd: Decimal | None = Field(
        default=None, gt=0, max_digits=12, decimal_places=2,
        description="Default: what is left of the invoice.",
    )  # fmt: skip
    reason: str = Field(min_length=1, max_length=500, description="Kept with the refund.")


class RefundOut(BaseModel):
    id: uuid.UUID
    invoice_id: uuid.UUID
    number: int
    amount_usd: Decimal
    reason: str
    status: str = Field(
        description="pending (the gateway did not answer: repeat), succeeded, failed"
    )
    failure_code: str | None
    created_at: datetime


class InvoiceOut(BaseModel):
    id: uuid.UUID
    number: int
    reason: str
    status: str
    currency: str
    period_start: datetime
    period_end: datetime
    subtotal_usd: Decimal
    tax_rate: Decimal
    tax_usd: Decimal
    total_usd: Decimal
    issued_at: datetime
    paid_at: datetime | None
    next_attempt_at: datetime | None
    lines: list[InvoiceLineOut] = []
    payments: list[PaymentOut] = []
    refunded_usd: Decimal = Decimal(0)
    refunds: list[RefundOut] = []


class PlanChangeOut(BaseModel):
    subscription: SubscriptionOut
    invoice: InvoiceOut | None


class SubscriptionEventOut(BaseModel):
    organization_id: uuid.UUID
    kind: str
    from_tier: str
    to_tier: str
    status: str
    mrr_before_usd: Decimal
    mrr_after_usd: Decimal
    occurred_at: datetime


class WebhookOut(BaseModel):
    received: bool = True
    duplicate: bool


class MovementsOut(BaseModel):
    new_usd: Decimal
    reactivation_usd: Decimal
    expansion_usd: Decimal
    contraction_usd: Decimal
    churn_usd: Decimal
    net_new_usd: Decimal = Field(description="new + reactivation + expansion - contraction - churn")
    counts: dict[str, int]


class RevenueOut(BaseModel):
    start: datetime
    end: datetime
    mrr_start_usd: Decimal
    mrr_usd: Decimal = Field(description="At `end`.")
    arr_usd: Decimal
    paying_accounts: int
    arpa_usd: Decimal
    movements: MovementsOut
    trials_started: int
    trials_converted: int
    trial_conversion_rate: Decimal | None
