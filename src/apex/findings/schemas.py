"""Findings' request and response bodies. Money is `Decimal` dollars, never a float."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class DismissIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(
        min_length=1, max_length=1000, description="Why it will not be done (kept with it)."
    )


class SavingOut(BaseModel):
    window_start: datetime
    window_end: datetime
    calls: int = Field(description="The workload's priced calls in the window.")
    saving_usd: Decimal = Field(description="The saving measured in the window.")
    share: Decimal = Field(description="The plan's share of it.")
    amount_usd: Decimal = Field(description="What the invoice billed for it.")
    invoice_id: uuid.UUID | None
    evidence: dict[str, Any]


class FindingOut(BaseModel):
    id: uuid.UUID
    run_id: uuid.UUID
    rank: int
    kind: str
    title: str
    workload: str
    provider: str
    model: str
    current_monthly_usd: Decimal
    projected_monthly_usd: Decimal
    savings_monthly_usd: Decimal = Field(description="What the analysis projected.")
    confidence: str
    evidence: dict[str, Any] = Field(description="What the analysis based it on.")
    steps: list[str]
    status: str = Field(description="open, dismissed, verifying, verified or not_realised.")
    status_reason: str | None
    adopted_at: datetime | None
    verify_until: datetime | None = Field(description="When the verification window ends.")
    baseline: dict[str, Any] | None = Field(description="The workload before adoption.")
    verification: dict[str, Any] | None = Field(description="The workload after, and the verdict.")
    verified_savings_usd: Decimal = Field(description="The savings measured and billed so far.")
    savings: list[SavingOut]
