"""Alert rules, the events they fire, and each notification's delivery.

Values (dollars, percent) are exact Decimals (`DecimalText`), computed from usage's integer
nanodollars and call counts.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from apex.kit.models import DecimalText, RecordModel, enum_check


class AlertKind(enum.StrEnum):
    SPEND = "spend"  # dollars spent over the trailing window above `threshold`
    ERROR_RATE = "error_rate"  # percent of calls failed over the window above `threshold`
    SPEND_ANOMALY = "spend_anomaly"  # spend over the window, as a multiple of its usual
    QUOTA = "quota"  # percent of the plan's monthly record quota used this month


class Notice(enum.StrEnum):
    FIRING = "firing"
    RESOLVED = "resolved"


class ChannelType(enum.StrEnum):
    EMAIL = "email"
    WEBHOOK = "webhook"  # JSON, signed: Apex-Signature: t=..,v1=<HMAC-SHA256>
    SLACK = "slack"  # a Slack-compatible incoming webhook: {"text": ...}


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"  # due at next_attempt_at (a retry, or after quiet hours)
    DELIVERED = "delivered"
    FAILED = "failed"  # every attempt failed


class AlertRule(RecordModel):
    __tablename__ = "alert_rules"
    __table_args__ = (
        CheckConstraint(enum_check("kind", AlertKind), name="kind"),
        Index("ix_alert_rules_organization_id", "organization_id"),
    )

    organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE")
    )
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(20))
    threshold: Mapped[Decimal] = mapped_column(DecimalText())
    window_minutes: Mapped[int]
    workload: Mapped[str | None] = mapped_column(String(100))
    model: Mapped[str | None] = mapped_column(String(100))
    min_calls: Mapped[int] = mapped_column(server_default=text("0"))
    for_seconds: Mapped[int] = mapped_column(server_default=text("0"))
    quiet_start_hour: Mapped[int | None] = mapped_column(SmallInteger)
    quiet_end_hour: Mapped[int | None] = mapped_column(SmallInteger)
    channels: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    webhook_secret: Mapped[str | None] = mapped_column(
        String(200),
        comment="Signs webhook deliveries; shown once, when the rule is created; stored "
        "sealed with APEX_SECRET_KEY (kit/sealing.py).",
    )
    enabled: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    breached_since: Mapped[datetime | None] = mapped_column(
        comment="When the condition started to hold (the for-duration counts from here)."
    )
    last_value: Mapped[Decimal | None] = mapped_column(DecimalText())
    last_evaluated_at: Mapped[datetime | None]


class AlertEvent(RecordModel):
    """One firing of a rule, open until the condition no longer holds."""

    __tablename__ = "alert_events"
    __table_args__ = (
        # At most one open event per rule, whatever number of workers evaluate it.
        Index(
            "uq_alert_events_open_rule",
            "rule_id",
            unique=True,
            postgresql_where=text("resolved_at IS NULL"),
            sqlite_where=text("resolved_at IS NULL"),
        ),
        Index("ix_alert_events_organization_id_fired_at", "organization_id", "fired_at"),
    )

    organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE")
    )
    rule_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("alert_rules.id", ondelete="CASCADE"))
    fired_at: Mapped[datetime]
    resolved_at: Mapped[datetime | None]
    value: Mapped[Decimal] = mapped_column(DecimalText(), comment="When it fired.")
    resolved_value: Mapped[Decimal | None] = mapped_column(DecimalText())
    threshold: Mapped[Decimal] = mapped_column(DecimalText())


class AlertDelivery(RecordModel):
    """One notice (firing or resolved) of one event to one channel, and its attempts."""

    __tablename__ = "alert_deliveries"
    __table_args__ = (
        CheckConstraint(enum_check("notice", Notice), name="notice"),
        CheckConstraint(enum_check("channel", ChannelType), name="channel"),
        CheckConstraint(enum_check("status", DeliveryStatus), name="status"),
        UniqueConstraint("event_id", "notice", "channel_index"),
        Index("ix_alert_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
    )

    organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE")
    )
    event_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("alert_events.id", ondelete="CASCADE"))
    notice: Mapped[str] = mapped_column(String(10))
    channel_index: Mapped[int] = mapped_column(SmallInteger)
    channel: Mapped[str] = mapped_column(String(10))
    target: Mapped[str] = mapped_column(String(500))
    status: Mapped[str] = mapped_column(String(10))
    attempts: Mapped[int] = mapped_column(server_default=text("0"))
    next_attempt_at: Mapped[datetime]
    delivered_at: Mapped[datetime | None]
    response_status: Mapped[int | None]
    last_error: Mapped[str | None] = mapped_column(Text)
