"""Customers' LLM call records and their negotiated price overrides."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from apex.kit.models import Base, IdMixin, RecordModel, enum_check, utc_now

NANOS_PER_USD = 1_000_000_000


def usd_to_nanos(amount: Decimal) -> int:
    """Dollars as the integer nano-dollars stored (half-even to the nano-dollar)."""
    return int((amount * NANOS_PER_USD).to_integral_value(ROUND_HALF_EVEN))


def nanos_to_usd(nanos: int) -> Decimal:
    return Decimal(nanos) / NANOS_PER_USD


class CallStatus(enum.StrEnum):
    OK = "ok"
    ERROR = "error"
    TIMEOUT = "timeout"


class CostSource(enum.StrEnum):
    REPORTED = "reported"  # the customer sent cost_usd
    CATALOGUE = "catalogue"  # computed from the pricing catalogue (or an override)
    UNPRICED = "unpriced"  # no price known when stored: cost 0 until a price exists


class UsageRecord(IdMixin, Base):
    """One LLM call of a customer. `record_id` is theirs and unique per organisation: the
    unique constraint is the dedup key, written in the same statement as the record.

    Cost is stored in integer nano-dollars so sums are exact on every backend.
    """

    __tablename__ = "usage_records"
    __table_args__ = (
        UniqueConstraint("organization_id", "record_id"),
        Index("ix_usage_records_organization_id_occurred_at", "organization_id", "occurred_at"),
        CheckConstraint(enum_check("status", CallStatus), name="status"),
        CheckConstraint(enum_check("cost_source", CostSource), name="cost_source"),
        CheckConstraint(
            "input_tokens >= 0 AND cached_input_tokens >= 0 AND cache_write_tokens >= 0 "
            "AND output_tokens >= 0 AND reasoning_tokens >= 0 AND prefix_tokens >= 0 "
            "AND cost_nanos >= 0",
            name="non_negative",
        ),
    )

    organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE")
    )
    record_id: Mapped[str] = mapped_column(String(200))
    occurred_at: Mapped[datetime]
    provider: Mapped[str] = mapped_column(String(50))
    model: Mapped[str] = mapped_column(String(100))
    workload: Mapped[str] = mapped_column(String(100))
    input_tokens: Mapped[int] = mapped_column(BigInteger)
    cached_input_tokens: Mapped[int] = mapped_column(BigInteger)
    cache_write_tokens: Mapped[int] = mapped_column(BigInteger)
    output_tokens: Mapped[int] = mapped_column(BigInteger)
    reasoning_tokens: Mapped[int] = mapped_column(BigInteger)
    latency_ms: Mapped[int | None]
    status: Mapped[str] = mapped_column(String(10))
    cost_nanos: Mapped[int] = mapped_column(BigInteger)
    cost_source: Mapped[str] = mapped_column(String(10))
    prompt_hash: Mapped[str | None] = mapped_column(String(128))
    prefix_hash: Mapped[str | None] = mapped_column(String(128))
    prefix_tokens: Mapped[int] = mapped_column(BigInteger)
    end_user: Mapped[str | None] = mapped_column(String(200))
    attributes: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON)
    ingested_at: Mapped[datetime] = mapped_column(default=utc_now)


class PriceOverride(RecordModel):
    """An organisation's negotiated price for one model (replaces the catalogue's)."""

    __tablename__ = "price_overrides"
    __table_args__ = (UniqueConstraint("organization_id", "provider", "model"),)

    organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE")
    )
    provider: Mapped[str] = mapped_column(String(50))
    model: Mapped[str] = mapped_column(String(100))
    price: Mapped[dict[str, Any]] = mapped_column(
        JSON, comment="A ModelPrice as JSON, Decimal values as strings."
    )
