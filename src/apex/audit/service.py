"""Writing the audit trail: `record` adds a row to the caller's transaction, so the row and
the change it describes commit (or roll back) together."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from apex.audit.models import AuditRecord
from apex.kit.db import call_after_commit

log = structlog.get_logger("apex.audit")


async def record(
    session: AsyncSession,
    action: str,
    *,
    now: datetime,
    organization_id: uuid.UUID | None,
    actor_id: uuid.UUID | None = None,
    target: tuple[str, object] | None = None,
    **details: Any,
) -> None:
    """`action` is `area.verb` (auth.login, member.role_changed, subscription.upgraded...);
    `details` are JSON values that say what changed, never a secret (None: left out)."""
    details = {name: value for name, value in details.items() if value is not None}
    request_id = structlog.contextvars.get_contextvars().get("request_id")
    session.add(
        AuditRecord(
            organization_id=organization_id,
            actor_id=actor_id,
            action=action,
            target_type=None if target is None else target[0],
            target_id=None if target is None else str(target[1]),
            details=details or None,
            request_id=None if request_id is None else str(request_id),
            occurred_at=now,
        )
    )
    await session.flush()

    async def exported() -> None:  # once committed: the trail goes out with the logs too
        log.info("audit", action=action, audit_organization_id=str(organization_id or ""),
                 actor_id=str(actor_id or ""), target_type=None if target is None else target[0],
                 target_id=None if target is None else str(target[1]))  # fmt: skip

    call_after_commit(session, exported)
