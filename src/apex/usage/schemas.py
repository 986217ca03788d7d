"""Usage records in and ingestion reports out."""

from __future__ import annotations

import json
import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    computed_field,
    field_validator,
    model_validator,
)

from apex.kit.clock import UtcInstant
from apex.kit.text import Text
from apex.usage.pricing import Capability

MAX_BATCH = 10_000
MAX_METADATA_CHARS = 4096
MAX_ECHO_CHARS = 200
Count = Field(default=0, ge=0, le=10**10)  # with StrictInt: true and "123" are not counts
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
    input_tokens: StrictInt = Count
    cached_input_tokens: StrictInt = Count
    cache_write_tokens: StrictInt = Count
    output_tokens: StrictInt = Count
    reasoning_tokens: StrictInt = Count
    latency_ms: StrictInt | None = Field(default=None, ge=0, le=86_400_000)
    status: Literal["ok", "error", "timeout"] = "ok"
    cost_usd: Decimal | None = Field(
        default=None,
        ge=0,
        le=10**6,
        description="What the call cost; computed from the pricing catalogue when absent.",
    )
    prompt_hash: str | None = Hash
    prefix_hash: str | None = Hash
    prefix_tokens: StrictInt = Count
    end_user: Text | None = Field(default=None, max_length=200)
    metadata: dict[str, Any] | None = Field(
        default=None,
        description=f"Yours, stored and returned as sent (≤ {MAX_METADATA_CHARS} "
        "characters of JSON).",
    )

    @field_validator("cost_usd", mode="before")
    @classmethod
    def _cost_is_a_number(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("must be a number of dollars, not a boolean")
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata_is_bounded(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            try:
                text = json.dumps(value, ensure_ascii=False, allow_nan=False)
                text.encode("utf-8")
            except (ValueError, UnicodeEncodeError):
                raise ValueError("must be JSON of valid Unicode text") from None
            if "\x00" in text or "\\u0000" in text:
                raise ValueError("must not contain NUL characters")
            if len(text) > MAX_METADATA_CHARS:
                raise ValueError(f"must be at most {MAX_METADATA_CHARS} characters of JSON")
        return value

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
    records: list[Any] = Field(
        min_length=1,
        max_length=MAX_BATCH,
        description="Usage records; each gets its own verdict (a non-object is rejected).",
    )


class FieldProblem(BaseModel):
    field: str
    reason: str


def echo(value: str) -> str:
    """A client's string as an answer may repeat it: at most MAX_ECHO_CHARS characters,
    lone surrogates and NULs replaced, so it can always be encoded."""
    clipped = value[:MAX_ECHO_CHARS]
    cleaned = "".join("\ufffd" if "\ud800" <= c <= "\udfff" or c == "\x00" else c for c in clipped)
    return cleaned + ("…" if len(value) > MAX_ECHO_CHARS else "")


class RecordResult(BaseModel):
    index: int
    id: str | None
    status: Literal["accepted", "duplicate", "rejected"]
    errors: list[FieldProblem] = Field(default_factory=list)
    warnings: list[FieldProblem] = Field(
        default_factory=list, description="Stored, but something needs your attention."
    )


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
    status: str
    reasoning: bool
    kind: str
    fine_tuned: bool
    aliases: list[str]
    overridden: bool


class UsageRecordOut(BaseModel):
    """A stored record as Apex keeps it (cost in dollars, exact; `cost_source` says how it
    was costed: reported, catalogue, or unpriced)."""

    id: str
    timestamp: datetime
    provider: str
    model: str
    workload: str
    input_tokens: int
    cached_input_tokens: int
    cache_write_tokens: int
    output_tokens: int
    reasoning_tokens: int
    latency_ms: int | None
    status: str
    cost_usd: Decimal
    cost_source: str
    prompt_hash: str | None
    prefix_hash: str | None
    prefix_tokens: int
    end_user: str | None
    metadata: dict[str, Any] | None


class TokensOut(BaseModel):
    input: int
    cached_input: int
    cache_write: int
    output: int
    reasoning: int


class UsageMeterOut(BaseModel):
    """What the organisation used in one UTC calendar month, read from the usage rollups
    (the same figures billing meters), and the plan's monthly record quota."""

    organization_id: uuid.UUID
    period: str = Field(description="YYYY-MM, UTC.")
    start: datetime
    end: datetime
    records: int
    tier: str = Field(description="The organisation's plan as this reading saw it.")
    records_included: int | None = Field(description="That plan's records a month; null: no limit.")
    tokens: TokensOut
    cost_usd: Decimal


class ImportOut(BaseModel):
    """A streamed import's progress: the counts of the chunks stored so far (each chunk
    commits with its counts), then its outcome."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    status: Literal["running", "succeeded", "failed"]
    lines: int = Field(description="Non-blank lines read and stored (or rejected) so far.")
    accepted: int
    duplicates: int
    rejected: int
    warnings: int
    error: str | None
    created_at: datetime
    finished_at: datetime | None

    @computed_field(  # type: ignore[prop-decorator]
        description="NDJSON: the verdict of every line rejected or stored with a warning "
        "(the first 10,000)."
    )
    @property
    def problems_url(self) -> str:
        return f"/api/v1/usage/imports/{self.id}/problems"


class SpendLine(BaseModel):
    """Calls, tokens and cost of one slice of a month (a workload, a model, a provider...)."""

    calls: int
    input_tokens: int
    output_tokens: int
    cost_usd: Decimal = Field(description="Exact (nano-dollar) sum; round only to display.")


class WorkloadSpend(SpendLine):
    workload: str


class ModelSpend(SpendLine):
    provider: str
    model: str


class ProviderSpend(SpendLine):
    provider: str


class SpendRow(SpendLine):
    workload: str
    provider: str
    model: str


class DaySpend(SpendLine):
    day: date
    workloads: dict[str, Decimal] = Field(description="Cost per workload that day.")


class SpendCoverage(BaseModel):
    """What the figures stand on: calls priced from the catalogue, from the cost the
    customer reported, or not priced at all (counted, cost 0 until a price exists)."""

    catalogue_calls: int
    reported_calls: int
    unpriced_calls: int


class SpendOut(BaseModel):
    """Where one UTC month's LLM money went, from the hourly rollups (milliseconds at any
    volume): totals, every day, and by workload, model and provider, largest first."""

    period: str = Field(description="YYYY-MM, UTC.")
    start: datetime
    end: datetime
    months: list[str] = Field(description="Months with usage, newest first (the picker).")
    total: SpendLine
    coverage: SpendCoverage
    days: list[DaySpend]
    workloads: list[WorkloadSpend]
    models: list[ModelSpend]
    providers: list[ProviderSpend]
    rows: list[SpendRow] = Field(description="Workload x provider x model, largest first.")
