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
    Double,
    ForeignKey,
    Index,
    SmallInteger,
    String,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from apex.kit.ids import new_id
from apex.kit.models import Base, RecordModel, enum_check, utc_now

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


class UsageRecord(Base):
    """One LLM call of a customer, as it arrived. Records are only ever added; they leave
    when the retention of the plan they arrived under has passed (`apex.usage.maintenance`).

    On PostgreSQL the table is partitioned by month of `occurred_at`, each month by
    `retention_days`, so retention drops whole partitions. A partitioned table cannot hold a
    unique key without the partition columns, so the dedup key lives in `usage_record_ids`
    and the table has no primary key of its own (`id` identifies a row for the ORM).

    Cost is stored in integer nano-dollars so sums are exact on every backend.
    """

    __tablename__ = "usage_records"
    __table_args__ = (
        Index("ix_usage_records_organization_id_occurred_at", "organization_id", "occurred_at"),
        CheckConstraint(enum_check("status", CallStatus), name="status"),
        CheckConstraint(enum_check("cost_source", CostSource), name="cost_source"),
        CheckConstraint(
            "input_tokens >= 0 AND cached_input_tokens >= 0 AND cache_write_tokens >= 0 "
            "AND output_tokens >= 0 AND reasoning_tokens >= 0 AND prefix_tokens >= 0 "
            "AND cost_nanos >= 0",
            name="non_negative",
        ),
        {"postgresql_partition_by": "RANGE (occurred_at)"},
    )

    id: Mapped[uuid.UUID] = mapped_column(default=new_id)
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
    # Days the record is kept: the retention of the organisation's plan when it arrived
    # (0: stored before retention classes existed, or by an instance of an earlier version
    # during an upgrade; the organisation's current plan's retention applies).
    retention_days: Mapped[int] = mapped_column(SmallInteger, server_default=text("0"))

    __mapper_args__ = {"primary_key": [id]}  # noqa: RUF012 (declarative reads it once)


class UsageRecordId(Base):
    """The dedup key of usage records: every record id an organisation has sent, written in
    the statement that stores the record. Ids outlive their records (retention drops those,
    not these), so a replayed old file is answered "duplicate" instead of resurrecting
    records the plan no longer keeps; `occurred_at` leads a lookup to the record's partition."""

    __tablename__ = "usage_record_ids"

    organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True
    )
    record_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    occurred_at: Mapped[datetime]


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


class HashKind(enum.StrEnum):
    """What a hash rollup counts: calls sharing a full prompt, or a prompt prefix."""

    PROMPT = "prompt"  # successful, priced calls with a prompt_hash (the duplicates analysis)
    PREFIX = "prefix"  # calls with a prefix_hash that neither read nor wrote a cache


class UsageRollup(Base):
    """An organisation's calls of one UTC hour, per workload, model, status and cost source:
    what the analyses and the billing meter read instead of the raw records. Kept in the
    same transaction as the records it sums (records are never updated, only added), so it
    always equals the aggregate of the raw records; `apex usage rebuild-rollups` recomputes
    it from them."""

    __tablename__ = "usage_rollups"

    organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True
    )
    hour: Mapped[datetime] = mapped_column(primary_key=True)
    workload: Mapped[str] = mapped_column(String(100), primary_key=True)
    provider: Mapped[str] = mapped_column(String(50), primary_key=True)
    model: Mapped[str] = mapped_column(String(100), primary_key=True)
    status: Mapped[str] = mapped_column(String(10), primary_key=True)
    cost_source: Mapped[str] = mapped_column(String(10), primary_key=True)
    calls: Mapped[int] = mapped_column(BigInteger)
    input_tokens: Mapped[int] = mapped_column(BigInteger)
    cached_input_tokens: Mapped[int] = mapped_column(BigInteger)
    cache_write_tokens: Mapped[int] = mapped_column(BigInteger)
    output_tokens: Mapped[int] = mapped_column(BigInteger)
    reasoning_tokens: Mapped[int] = mapped_column(BigInteger)
    cost_nanos: Mapped[int] = mapped_column(BigInteger)
    calls_with_end_user: Mapped[int] = mapped_column(BigInteger)
    calls_with_latency: Mapped[int] = mapped_column(BigInteger)
    latency_ms_sum: Mapped[int] = mapped_column(BigInteger)
    latency_ms_max: Mapped[int] = mapped_column(BigInteger)
    max_prompt_tokens: Mapped[int] = mapped_column(BigInteger)
    max_output_tokens: Mapped[int] = mapped_column(BigInteger)
    first_record_id: Mapped[str] = mapped_column(String(200))
    last_record_id: Mapped[str] = mapped_column(String(200))
    # Sufficient statistics of the cost fit (apex.usage.spend.FitRow), as floats.
    fit_c: Mapped[float] = mapped_column(Double)
    fit_ii: Mapped[float] = mapped_column(Double)
    fit_ir: Mapped[float] = mapped_column(Double)
    fit_io: Mapped[float] = mapped_column(Double)
    fit_rr: Mapped[float] = mapped_column(Double)
    fit_ro: Mapped[float] = mapped_column(Double)
    fit_oo: Mapped[float] = mapped_column(Double)
    fit_ic: Mapped[float] = mapped_column(Double)
    fit_rc: Mapped[float] = mapped_column(Double)
    fit_oc: Mapped[float] = mapped_column(Double)
    fit_cc: Mapped[float] = mapped_column(Double)


class UsageHashRollup(Base):
    """Calls sharing one prompt (or prefix) hash in one UTC hour."""

    __tablename__ = "usage_hash_rollups"

    organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True
    )
    kind: Mapped[str] = mapped_column(String(10), primary_key=True)
    workload: Mapped[str] = mapped_column(String(100), primary_key=True)
    provider: Mapped[str] = mapped_column(String(50), primary_key=True)
    model: Mapped[str] = mapped_column(String(100), primary_key=True)
    hash: Mapped[str] = mapped_column(String(128), primary_key=True)
    hour: Mapped[datetime] = mapped_column(primary_key=True)
    calls: Mapped[int] = mapped_column(BigInteger)
    cost_nanos: Mapped[int] = mapped_column(BigInteger)
    prefix_tokens: Mapped[int] = mapped_column(BigInteger)
    first_record_id: Mapped[str] = mapped_column(String(200))
    last_record_id: Mapped[str] = mapped_column(String(200))


class UsageHashTotal(Base):
    """All-time calls per hash, with the first and last hour they fell in. Most prompts are
    sent once: the partial index over hashes seen at least twice lets the repeated-prompt
    analysis visit only those, and a hash whose lifetime lies inside the analysed window is
    read from this one row instead of its hourly ones."""

    __tablename__ = "usage_hash_totals"
    __table_args__ = (
        Index(
            "ix_usage_hash_totals_repeated",
            "organization_id",
            "kind",
            postgresql_where=text("calls >= 2"),
            sqlite_where=text("calls >= 2"),
        ),
        CheckConstraint(enum_check("kind", HashKind), name="kind"),
    )

    organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True
    )
    kind: Mapped[str] = mapped_column(String(10), primary_key=True)
    workload: Mapped[str] = mapped_column(String(100), primary_key=True)
    provider: Mapped[str] = mapped_column(String(50), primary_key=True)
    model: Mapped[str] = mapped_column(String(100), primary_key=True)
    hash: Mapped[str] = mapped_column(String(128), primary_key=True)
    calls: Mapped[int] = mapped_column(BigInteger)
    cost_nanos: Mapped[int] = mapped_column(BigInteger)
    prefix_tokens: Mapped[int] = mapped_column(BigInteger)
    first_record_id: Mapped[str] = mapped_column(String(200))
    last_record_id: Mapped[str] = mapped_column(String(200))
    first_hour: Mapped[datetime]
    last_hour: Mapped[datetime]


class ImportStatus(enum.StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # the upload broke off or could not be read: what committed is kept


class UsageImport(RecordModel):
    """A streamed NDJSON upload (`POST /api/v1/usage/events:import`). Its counters are
    updated in the transaction of each chunk they count, so they always say what is stored."""

    __tablename__ = "usage_imports"
    __table_args__ = (CheckConstraint(enum_check("status", ImportStatus), name="status"),)

    organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    created_by_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL")
    )
    status: Mapped[str] = mapped_column(String(10))
    lines: Mapped[int] = mapped_column(BigInteger, default=0)
    accepted: Mapped[int] = mapped_column(BigInteger, default=0)
    duplicates: Mapped[int] = mapped_column(BigInteger, default=0)
    rejected: Mapped[int] = mapped_column(BigInteger, default=0)
    warnings: Mapped[int] = mapped_column(BigInteger, default=0)
    error: Mapped[str | None] = mapped_column(String(500))
    finished_at: Mapped[datetime | None]


class UsageImportProblem(Base):
    """The verdict of one line of an import that was rejected or stored with a warning
    (accepted and duplicate lines are only counted)."""

    __tablename__ = "usage_import_problems"

    import_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("usage_imports.id", ondelete="CASCADE"), primary_key=True
    )
    line: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE")
    )
    verdict: Mapped[dict[str, Any]] = mapped_column(JSON)
