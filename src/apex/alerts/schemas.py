"""What the alerts API takes and answers."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from apex.alerts.models import AlertKind
from apex.identity.schemas import Email
from apex.kit.text import Text

Url = Annotated[Text, Field(min_length=8, max_length=500)]
Scope = Annotated[Text, Field(min_length=1, max_length=100)]
MAX_PERCENT = Decimal(100)
PERCENT_KINDS = (AlertKind.ERROR_RATE, AlertKind.QUOTA)


class EmailChannel(BaseModel):
    type: Literal["email"]
    to: Email


class WebhookChannel(BaseModel):
    """JSON POSTed with `Apex-Signature: t=..,v1=..` (HMAC-SHA256 with the rule's secret)."""

    type: Literal["webhook"]
    url: Url


class SlackChannel(BaseModel):
    """A Slack-compatible incoming webhook: `{"text": ...}` POSTed."""

    type: Literal["slack"]
    url: Url


Channel = Annotated[EmailChannel | WebhookChannel | SlackChannel, Field(discriminator="type")]


class QuietHours(BaseModel):
    """UTC hours [start_hour, end_hour) during which notices wait (it may wrap midnight)."""

    start_hour: int = Field(ge=0, le=23)
    end_hour: int = Field(ge=0, le=23)


class RuleFields(BaseModel):
    threshold: Decimal | None = Field(
        default=None,
        gt=0,
        max_digits=18,
        decimal_places=6,
        description="Dollars (spend), percent of calls failed (error_rate), a multiple of "
        "the usual spend (spend_anomaly: 3 = three times), percent of the quota (quota).",
    )
    window_minutes: int | None = Field(default=None, ge=5, le=10_080)
    min_calls: int | None = Field(
        default=None, ge=0, le=1_000_000, description="error_rate: fewer calls are not judged."
    )
    for_seconds: int | None = Field(
        default=None, ge=0, le=86_400, description="How long it must hold before firing."
    )
    quiet_hours: QuietHours | None = None
    channels: list[Channel] | None = Field(default=None, min_length=1, max_length=10)
    enabled: bool | None = None


class RuleIn(RuleFields):
    name: Annotated[Text, Field(min_length=1, max_length=200)]
    kind: AlertKind
    threshold: Decimal = Field(gt=0, max_digits=18, decimal_places=6)
    window_minutes: int = Field(default=1440, ge=5, le=10_080)
    workload: Scope | None = None
    model: Scope | None = None
    min_calls: int = Field(default=20, ge=0, le=1_000_000)
    for_seconds: int = Field(default=0, ge=0, le=86_400)
    channels: list[Channel] = Field(min_length=1, max_length=10)
    enabled: bool = True

    @model_validator(mode="after")
    def _percent_at_most_100(self) -> Self:
        if self.kind in PERCENT_KINDS and self.threshold > MAX_PERCENT:
            raise ValueError(f"threshold: a {self.kind} rule's threshold is a percent, at most 100")
        return self


class RulePatch(RuleFields):
    name: Annotated[Text, Field(min_length=1, max_length=200)] | None = None


class RuleOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    kind: AlertKind
    threshold: Decimal
    window_minutes: int
    workload: str | None
    model: str | None
    min_calls: int
    for_seconds: int
    quiet_hours: QuietHours | None
    channels: list[Channel]
    enabled: bool
    state: Literal["ok", "pending", "firing"]
    last_value: Decimal | None
    last_evaluated_at: datetime | None
    created_at: datetime


class RuleCreated(RuleOut):
    webhook_secret: str | None = Field(
        description="Verifies the rule's webhook notices; shown only now (and when a webhook "
        "channel is first added)."
    )


class EventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    rule_id: uuid.UUID
    state: Literal["firing", "resolved"]
    fired_at: datetime
    resolved_at: datetime | None
    value: Decimal
    resolved_value: Decimal | None
    threshold: Decimal


class DeliveryOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    event_id: uuid.UUID
    notice: str
    channel: str
    target: str
    status: str
    attempts: int
    next_attempt_at: datetime
    delivered_at: datetime | None
    response_status: int | None
    last_error: str | None
