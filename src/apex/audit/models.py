"""The audit trail: one row per security-relevant event, written in the transaction of the
change it records, never updated or deleted (the database refuses both, by trigger)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from apex.kit.ids import new_id
from apex.kit.models import Base


class AuditRecord(Base):
    """Who did what to what, when. No foreign keys: the trail outlives what it names."""

    __tablename__ = "audit_records"
    __table_args__ = (
        Index("ix_audit_records_organization_id_occurred_at", "organization_id", "occurred_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    organization_id: Mapped[uuid.UUID | None] = mapped_column(
        comment="Whose trail it is (none: the installation's, e.g. a login to no account)."
    )
    actor_id: Mapped[uuid.UUID | None] = mapped_column(comment="The user who acted, if any.")
    action: Mapped[str] = mapped_column(String(60), index=True)
    target_type: Mapped[str | None] = mapped_column(String(40))
    target_id: Mapped[str | None] = mapped_column(String(100))
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    request_id: Mapped[str | None] = mapped_column(String(100))
    occurred_at: Mapped[datetime]
