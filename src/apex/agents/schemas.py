"""Agent runs in and out."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, Field, model_validator

from apex.kit.clock import UtcInstant
from apex.kit.text import Text


class RunIn(BaseModel):
    question: Text = Field(min_length=1, max_length=4000)
    thread_id: uuid.UUID | None = Field(
        default=None, description="Your thread; a new one is started when absent."
    )
    period_start: UtcInstant | None = Field(
        default=None,
        description="Start of the usage analysed; default: 30 days before now. The period "
        "is analysed in whole UTC hours: the start rounds down, the end up.",
    )
    period_end: UtcInstant | None = Field(default=None, description="End; default: now.")
    token_budget: int | None = Field(default=None, ge=1, le=10_000_000)
    cost_budget_usd: Decimal | None = Field(default=None, ge=0, le=1000)

    @model_validator(mode="after")
    def _ordered(self) -> RunIn:
        if self.period_start and self.period_end and self.period_start >= self.period_end:
            raise ValueError("period_start must be before period_end")
        return self


class StepOut(BaseModel):
    name: str
    position: int
    status: str
    attempts: int
    started_at: datetime | None
    finished_at: datetime | None
    duration_ms: int | None
    llm_calls: int
    tokens_used: int
    error: str | None


class RunOut(BaseModel):
    id: uuid.UUID
    thread_id: uuid.UUID
    question: str
    status: str
    period_start: datetime
    period_end: datetime
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    token_budget: int
    tokens_used: int
    llm_calls: int
    cost_used_usd: Decimal
    steps: list[StepOut] = Field(default_factory=list)


class ReportOut(BaseModel):
    run_id: uuid.UUID
    markdown: str
    report: dict[str, Any]


class EventOut(BaseModel):
    id: str
    type: str
    payload: dict[str, Any]
