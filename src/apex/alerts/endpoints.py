"""Customer alerts under /api/v1/alerts: rules, the events they fired, each notice's log."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from apex.alerts import service
from apex.alerts.models import AlertEvent, AlertRule
from apex.alerts.repository import (
    AlertDeliveryRepository,
    AlertEventRepository,
    AlertRuleRepository,
)
from apex.alerts.schemas import (
    DeliveryOut,
    EventOut,
    QuietHours,
    RuleCreated,
    RuleIn,
    RuleOut,
    RulePatch,
)
from apex.identity.deps import Principal, RequirePermission
from apex.kit.deps import SessionDep
from apex.kit.sealing import Sealer

router = APIRouter(prefix="/api/v1/alerts", tags=["alerts"])
Reader = Annotated[Principal, RequirePermission("usage:read")]
Manager = Annotated[Principal, RequirePermission("alerts:manage")]


async def _out(session: SessionDep, rule: AlertRule) -> dict[str, Any]:
    quiet = (
        QuietHours(start_hour=rule.quiet_start_hour, end_hour=rule.quiet_end_hour)
        if rule.quiet_start_hour is not None and rule.quiet_end_hour is not None
        else None
    )
    fields = {name: getattr(rule, name) for name in RuleOut.model_fields if hasattr(rule, name)}
    return {**fields, "quiet_hours": quiet, "state": await service.state_of(session, rule)}


def _event(event: AlertEvent) -> EventOut:
    state = "firing" if event.resolved_at is None else "resolved"
    return EventOut.model_validate({**event.__dict__, "state": state})


def _allow_private(request: Request) -> bool:
    return bool(request.app.state.settings.alert_webhooks_allow_private)


@router.get("/rules", response_model=list[RuleOut])
async def list_rules(principal: Reader, session: SessionDep) -> list[dict[str, Any]]:
    rules = await AlertRuleRepository(session).of_organization(principal.organization_id)
    return [await _out(session, rule) for rule in rules]


@router.post("/rules", status_code=201, response_model=RuleCreated)
async def create_rule(
    body: RuleIn, request: Request, principal: Manager, session: SessionDep
) -> dict[str, Any]:
    """A rule over the organisation's own usage, evaluated by the workers every
    `APEX_ALERT_EVALUATION_SECONDS`. The webhook secret is answered only here."""
    rule, secret = await service.create_rule(
        session, principal.organization_id, body.model_dump(mode="json") | {
            "threshold": body.threshold},
        actor_id=principal.user_id, now=request.app.state.clock.now(),
        allow_private=_allow_private(request),
        sealer=Sealer.from_settings(request.app.state.settings),
    )  # fmt: skip
    return {**await _out(session, rule), "webhook_secret": secret}


@router.get("/rules/{rule_id}", response_model=RuleOut)
async def get_rule(rule_id: uuid.UUID, principal: Reader, session: SessionDep) -> dict[str, Any]:
    rule = await AlertRuleRepository(session).owned(principal.organization_id, rule_id)
    return await _out(session, rule)


@router.patch("/rules/{rule_id}", response_model=RuleCreated)
async def update_rule(
    rule_id: uuid.UUID, body: RulePatch, request: Request, principal: Manager, session: SessionDep
) -> dict[str, Any]:
    """Change what is given; `webhook_secret` is set only when a webhook channel was added
    to a rule that had none."""
    fields = body.model_dump(mode="json", exclude_unset=True)
    if body.threshold is not None:
        fields["threshold"] = body.threshold
    rule, secret = await service.update_rule(
        session, principal.organization_id, rule_id, fields,
        actor_id=principal.user_id, now=request.app.state.clock.now(),
        allow_private=_allow_private(request),
        sealer=Sealer.from_settings(request.app.state.settings),
    )  # fmt: skip
    return {**await _out(session, rule), "webhook_secret": secret}


@router.delete("/rules/{rule_id}", status_code=204)
async def delete_rule(
    rule_id: uuid.UUID, request: Request, principal: Manager, session: SessionDep
) -> Response:
    await service.delete_rule(
        session, principal.organization_id, rule_id,
        actor_id=principal.user_id, now=request.app.state.clock.now(),
    )  # fmt: skip
    return Response(status_code=204)


@router.get("/events", response_model=list[EventOut])
async def list_events(
    principal: Reader,
    session: SessionDep,
    rule_id: Annotated[uuid.UUID | None, Query(description="Only this rule's events.")] = None,
    firing: Annotated[bool, Query(description="Only events still firing.")] = False,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[EventOut]:
    """Newest first."""
    events = await AlertEventRepository(session).of_organization(
        principal.organization_id, rule_id=rule_id, open_only=firing, limit=limit
    )
    return [_event(event) for event in events]


@router.get("/events/{event_id}/deliveries", response_model=list[DeliveryOut])
async def list_deliveries(
    event_id: uuid.UUID, principal: Reader, session: SessionDep
) -> list[DeliveryOut]:
    """Every notice of the event (firing, then resolved) per channel: attempts, the answer,
    the last error, when it went out or will be tried again."""
    event = await AlertEventRepository(session).owned(principal.organization_id, event_id)
    deliveries = await AlertDeliveryRepository(session).of_event(event.id)
    return [DeliveryOut.model_validate(delivery) for delivery in deliveries]
