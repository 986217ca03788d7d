"""Product telemetry: per-organisation points the dashboards chart (records ingested, runs).

Written in batches by `telemetry.PointBuffer`, never in the request's transaction: a point is
recorded once the change it counts has committed.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from apex.kit.models import Base, IdMixin


class TelemetryPoint(IdMixin, Base):
    __tablename__ = "telemetry_points"
    __table_args__ = (
        Index("ix_telemetry_points_organization_id_metric_at", "organization_id", "metric", "at"),
    )

    organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE")
    )
    metric: Mapped[str] = mapped_column(String(50))
    value: Mapped[int] = mapped_column(BigInteger)
    at: Mapped[datetime]
    instance: Mapped[str] = mapped_column(String(100), comment="The process that recorded it.")
