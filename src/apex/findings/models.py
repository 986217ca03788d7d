"""Findings (a report's recommendations, kept so they can be acted on) and the savings
measured after one is adopted.

Amounts measured from usage are integer nanodollars (as usage stores cost); what an
invoice bills is integer cents (`apex.billing.money`).
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from apex.kit.models import RecordModel, enum_check


class FindingStatus(enum.StrEnum):
    OPEN = "open"
    DISMISSED = "dismissed"
    VERIFYING = "verifying"  # adopted; its saving is being measured
    VERIFIED = "verified"  # the saving materialised: its share is billed
    NOT_REALISED = "not_realised"  # no saving, a quality regression, or too few calls


class Finding(RecordModel):
    """One recommendation of a succeeded run, as the report showed it."""

    __tablename__ = "findings"
    __table_args__ = (
        CheckConstraint(enum_check("status", FindingStatus), name="status"),
        UniqueConstraint("run_id", "rank"),
        Index("ix_findings_organization_id_status", "organization_id", "status"),
    )

    organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE")
    )
    run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("agent_runs.id", ondelete="CASCADE"))
    rank: Mapped[int]
    kind: Mapped[str] = mapped_column(String(50))
    title: Mapped[str] = mapped_column(Text)
    workload: Mapped[str] = mapped_column(String(100))
    provider: Mapped[str] = mapped_column(String(50))
    model: Mapped[str] = mapped_column(String(100))
    recommendation: Mapped[dict[str, Any]] = mapped_column(
        JSON, comment="The report's recommendation: figures, evidence, steps."
    )
    status: Mapped[str] = mapped_column(String(20), default=FindingStatus.OPEN.value)
    status_reason: Mapped[str | None] = mapped_column(
        Text, comment="Why it was dismissed, or why its saving was not verified."
    )
    adopted_at: Mapped[datetime | None]
    adopted_by: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL")
    )
    verify_from: Mapped[datetime | None] = mapped_column(
        comment="The first whole hour after adoption: where measurement starts."
    )
    verify_until: Mapped[datetime | None] = mapped_column(index=True)
    baseline: Mapped[dict[str, Any] | None] = mapped_column(
        JSON, comment="The workload before adoption (measured at adoption and at the verdict)."
    )
    verification: Mapped[dict[str, Any] | None] = mapped_column(
        JSON, comment="The workload over the verification window, and the verdict."
    )
    billed_through: Mapped[datetime | None] = mapped_column(
        comment="Savings up to here have been billed (starts where verification ended)."
    )
    bill_until: Mapped[datetime | None] = mapped_column(
        comment="Savings are shared for a year after verification, not after."
    )


class SavingsMeasurement(RecordModel):
    """The saving of one verified finding over one billed window, with its evidence. Never
    updated: the invoice line it produced is final."""

    __tablename__ = "savings_measurements"
    __table_args__ = (UniqueConstraint("finding_id", "window_start"),)

    organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    finding_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("findings.id", ondelete="CASCADE"), index=True
    )
    invoice_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("invoices.id", ondelete="SET NULL"), index=True
    )
    window_start: Mapped[datetime]
    window_end: Mapped[datetime]
    calls: Mapped[int] = mapped_column(BigInteger, comment="Priced calls of the workload.")
    saving_nanos: Mapped[int] = mapped_column(BigInteger)
    share: Mapped[str] = mapped_column(String(12), comment="The plan's share, e.g. 0.15.")
    amount_cents: Mapped[int] = mapped_column(BigInteger)
    evidence: Mapped[dict[str, Any]] = mapped_column(JSON)
