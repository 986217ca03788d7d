"""The payment gateway's webhook events: each applied once, whatever the order they come in.

- Once: the event id is stored in the transaction that applies it (`gateway_events`,
  unique); a redelivery, concurrent or later, finds it and changes nothing.
- Order: a checkout completed before the last one applied is not applied over it (an
  upgrade is not undone by its predecessor arriving late), and a payment's success is
  final (a failure event that arrives after it changes nothing).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from apex.billing import service
from apex.billing.models import InvoiceStatus, PaymentStatus
from apex.billing.repository import GatewayEventRepository
from apex.kit.errors import BadRequest
from apex.kit.mail import Mailer


@dataclass(slots=True)
class Outcome:
    duplicate: bool = False
    collect: list[uuid.UUID] = field(default_factory=list)


def parse_event(body: bytes) -> dict[str, Any]:
    try:
        event = json.loads(body)
        _ = (event["id"], event["type"], event["created"], event["data"]["object"])
    except (ValueError, KeyError, TypeError):
        raise BadRequest("The body is not a gateway event.", field="body") from None
    if not isinstance(event, dict):
        raise BadRequest("The body is not a gateway event.", field="body")
    return event


async def apply(
    session: AsyncSession,
    event: dict[str, Any],
    *,
    tax_rate: Decimal,
    now: datetime,
    mailer: Mailer | None = None,
) -> Outcome:
    created = datetime.fromtimestamp(int(event["created"]), UTC)
    if not await GatewayEventRepository(session).record_once(event["id"], event["type"], created):
        return Outcome(duplicate=True)
    obj: dict[str, Any] = event["data"]["object"]
    kind = event["type"]
    if kind == "checkout.session.completed":
        return await _checkout_completed(session, obj, created, tax_rate=tax_rate, now=now)
    if kind in ("payment_intent.succeeded", "payment_intent.payment_failed"):
        return await _payment_intent(session, obj, kind, now, mailer)
    return Outcome()  # stored (so it is never processed twice), nothing to do


async def _checkout_completed(
    session: AsyncSession,
    obj: dict[str, Any],
    created: datetime,
    *,
    tax_rate: Decimal,
    now: datetime,
) -> Outcome:
    metadata = obj.get("metadata") or {}
    try:
        organization_id = uuid.UUID(metadata["organization_id"])
        tier = str(metadata["tier"])
        customer = str(obj["customer"])
    except (KeyError, ValueError):
        return Outcome()  # not a checkout Apex started
    invoice = await service.complete_checkout(
        session, organization_id, tier, customer, tax_rate=tax_rate, now=now, completed_at=created
    )
    return Outcome(collect=[invoice.id] if invoice and invoice.status == InvoiceStatus.OPEN else [])


async def _payment_intent(
    session: AsyncSession, obj: dict[str, Any], kind: str, now: datetime, mailer: Mailer | None
) -> Outcome:
    key = (obj.get("metadata") or {}).get("idempotency_key")
    if not key:
        return Outcome()
    error = obj.get("last_payment_error") or {}
    code = None if kind == "payment_intent.succeeded" else (
        error.get("decline_code") or error.get("code") or "card_declined"
    )  # fmt: skip
    status = (
        PaymentStatus.SUCCEEDED if code is None
        else PaymentStatus.REQUIRES_ACTION if error.get("code") == "authentication_required"
        else PaymentStatus.FAILED
    )  # fmt: skip
    await service.settle(
        session, key, status, gateway_payment_id=obj.get("id"), failure_code=code, now=now,
        mailer=mailer,
    )  # fmt: skip
    return Outcome()
