"""Usage records in and ingestion reports out."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from apex.kit.clock import UtcInstant
from apex.kit.text import Text
from apex.usage.pricing import Capability

MAX_BATCH = 1000
Count = Field(default=0, ge=0, le=10**10)
Hash = Field(default=None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9:_+/=.-]+$")


class UsageRecordIn(BaseModel):
    """One LLM call as the customer reports it. Token categories never overlap:
    `input_tokens` excludes the cached and cache-write ones; `output_tokens` excludes
    `reasoning_tokens`."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    id: Text = Field(min_length=1, max_length=200, description="Yours; unique per organisation.")
    timestamp: UtcInstant = Field(description="When the call was made, with a time zone.")
    provider: str = Field(min_length=1, max_length=50, pattern=r"^[a-z0-9][a-z0-9._-]*$")
    model: Text = Field(min_length=1, max_length=100)
    workload: Text = Field(default="default", min_length=1, max_length=100)
    input_tokens: int = Count
    cached_input_tokens: int = Count
    cache_write_tokens: int = Count
    output_tokens: int = Count
    reasoning_tokens: int = Count
    latency_ms: int | None = Field(default=None, ge=0, le=86_400_000)
    status: Literal["ok", "error", "timeout"] = "ok"
    cost_usd: Decimal | None = Field(
        default=None,
        ge=0,
        le=10**6,
        description="What the call cost; computed from the pricing catalogue when absent.",
    )
    prompt_hash: str | None = Hash
    prefix_hash: str | None = Hash
    prefix_tokens: int = Count
    end_user: Text | None = Field(default=None, max_length=200)
    metadata: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _prefix_within_prompt(self) -> UsageRecordIn:
        prompt = self.input_tokens + self.cached_input_tokens + self.cache_write_tokens
        if self.prefix_tokens > prompt:
            raise ValueError(
                f"prefix_tokens ({self.prefix_tokens}) exceeds the prompt's tokens ({prompt})"
            )
        if self.prefix_tokens and self.prefix_hash is None:
            raise ValueError("prefix_tokens needs prefix_hash")
        return self


class UsageBatchIn(BaseModel):
    records: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_BATCH)


class FieldProblem(BaseModel):
    field: str
    reason: str


class RecordResult(BaseModel):
    index: int
    id: str | None
    status: Literal["accepted", "duplicate", "rejected"]
    errors: list[FieldProblem] = Field(default_factory=list)


class IngestReport(BaseModel):
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    results: list[RecordResult] = Field(default_factory=list)

    def merge(self, other: IngestReport, offset: int) -> None:
        self.accepted += other.accepted
        self.duplicates += other.duplicates
        self.rejected += other.rejected
        self.results.extend(
            result.model_copy(update={"index": result.index + offset}) for result in other.results
        )


class PriceIn(BaseModel):
    """A negotiated price, USD per million tokens."""

    model_config = ConfigDict(extra="forbid")

    capability: Capability = "frontier"
    context_window: int = Field(default=128_000, gt=0, le=100_000_000)
    input: Decimal = Field(ge=0, le=10_000)
    cached_input: Decimal | None = Field(default=None, ge=0, le=10_000)
    cache_write: Decimal | None = Field(default=None, ge=0, le=10_000)
    output: Decimal = Field(ge=0, le=10_000)
    batch_discount: Decimal = Field(default=Decimal(0), ge=0, lt=1)
    source: Text = Field(default="negotiated rate", min_length=1, max_length=200)

    @model_validator(mode="after")
    def _cached_not_dearer(self) -> PriceIn:
        if self.cached_input is not None and self.cached_input > self.input:
            raise ValueError("cached_input must not cost more than input")
        return self


class PriceOut(BaseModel):
    provider: str
    model: str
    capability: str
    context_window: int
    input: Decimal
    cached_input: Decimal
    cache_write: Decimal
    output: Decimal
    batch_discount: Decimal
    price_date: date
    source: str
    overridden: bool
