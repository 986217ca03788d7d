"""The organisation's audit trail, for its owners: GET /api/v1/audit."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict

from apex.audit.repository import AuditRepository
from apex.identity.deps import Principal, RequirePermission
from apex.kit.clock import UtcInstant
from apex.kit.deps import SessionDep
from apex.kit.text import Text

router = APIRouter(prefix="/api/v1/audit", tags=["audit"])


class AuditOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    occurred_at: datetime
    action: str
    actor_id: uuid.UUID | None
    target_type: str | None
    target_id: str | None
    details: dict[str, Any] | None
    request_id: str | None


@router.get("", response_model=list[AuditOut])
async def audit_trail(
    principal: Annotated[Principal, RequirePermission("audit:read")],
    session: SessionDep,
    actor_id: Annotated[uuid.UUID | None, Query(description="Only what this user did.")] = None,
    action: Annotated[
        Text | None,
        Query(
            max_length=60, description="An action (auth.login) or a prefix ending in '.' (auth.)."
        ),
    ] = None,
    since: Annotated[UtcInstant | None, Query(description="From this time (inclusive).")] = None,
    until: Annotated[UtcInstant | None, Query(description="Before this time.")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[AuditOut]:
    """Security-relevant events of the organisation, oldest first: sign-ins and failed
    sign-ins, members and roles, invitations, API keys, plan changes, payments, refunds,
    findings acted on. Written with the change itself; never edited."""
    found = await AuditRepository(session).of_organization(
        principal.organization_id, actor_id=actor_id, action=action, since=since, until=until,
        limit=limit,
    )  # fmt: skip
    return [AuditOut.model_validate(row) for row in found]
