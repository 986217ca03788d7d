"""Refunds: an operator gives money back on a paid invoice, in three steps like a charge
(`collection.py`): the refund stored pending with its key, the gateway called with that
key, the outcome stored. A request repeated while one is pending sends the pending one
again (same key: the gateway refunds once)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from apex.audit import service as audit
from apex.billing.gateway import PaymentGateway, metadata_for
from apex.billing.models import (
    InvoiceStatus,
    PaymentStatus,
    Refund,
    RefundStatus,
)
from apex.billing.money import dollars
from apex.billing.repository import InvoiceRepository, PaymentRepository, RefundRepository
from apex.kit.db import Database
from apex.kit.errors import Conflict, NotFound, ValidationFailed

AMOUNT_FIELD = "amount_usd"


def refund_key(invoice_id: uuid.UUID, number: int) -> str:
    return f"apex-refund-{invoice_id}-{number}"


@dataclass(frozen=True, slots=True)
class Pending:
    refund_id: uuid.UUID
    invoice_id: uuid.UUID
    organization_id: uuid.UUID
    idempotency_key: str
    gateway_payment_id: str
    amount_cents: int


def _refused(detail: str, message: str) -> ValidationFailed:
    return ValidationFailed(detail, errors=[{"field": AMOUNT_FIELD, "message": message}])


async def begin(
    session: AsyncSession,
    invoice_id: uuid.UUID,
    amount_cents: int | None,
    reason: str,
    operator_id: uuid.UUID,
) -> Pending:
    """Store the refund (pending) under the invoice's lock; or find the one pending."""
    invoice = await InvoiceRepository(session).locked(invoice_id)
    if invoice is None:
        raise NotFound("No such invoice.")
    if invoice.status != InvoiceStatus.PAID:
        raise Conflict(
            f"Invoice {invoice.number} is {invoice.status}: only a paid one is refunded."
        )
    refunds = await RefundRepository(session).of_invoice(invoice.id)
    pending = [r for r in refunds if r.status == RefundStatus.PENDING]
    if pending:
        (resend,) = pending  # one at a time: the lock serialises requests
        if amount_cents is not None and amount_cents != resend.amount_cents:
            raise Conflict(
                f"Refund {resend.number} of ${dollars(resend.amount_cents)} is still pending: "
                "repeat that request (same amount) to complete it first."
            )
        return _pending(resend)
    left = invoice.total_cents - sum(
        r.amount_cents for r in refunds if r.status == RefundStatus.SUCCEEDED
    )
    if left <= 0:
        raise Conflict(f"Invoice {invoice.number} is refunded in full.")
    amount = left if amount_cents is None else amount_cents
    if amount <= 0:
        raise _refused("A refund is a positive amount.", "must be more than 0")
    if amount > left:
        raise _refused(
            f"Only ${dollars(left)} of invoice {invoice.number} is left to refund.",
            f"at most {dollars(left)}",
        )
    paid = [p for p in await PaymentRepository(session).of_invoice(invoice.id)
            if p.status == PaymentStatus.SUCCEEDED and p.gateway_payment_id]  # fmt: skip
    if not paid:
        raise Conflict(f"Invoice {invoice.number} was not paid through the gateway.")
    number = len(refunds) + 1
    refund = Refund(
        invoice_id=invoice.id,
        organization_id=invoice.organization_id,
        number=number,
        idempotency_key=refund_key(invoice.id, number),
        amount_cents=amount,
        reason=reason,
        status=RefundStatus.PENDING,
        gateway_payment_id=paid[-1].gateway_payment_id,
        requested_by=operator_id,
    )
    await RefundRepository(session).add(refund)
    return _pending(refund)


def _pending(refund: Refund) -> Pending:
    return Pending(
        refund.id, refund.invoice_id, refund.organization_id, refund.idempotency_key,
        refund.gateway_payment_id, refund.amount_cents,
    )  # fmt: skip


async def refund(
    database: Database,
    gateway: PaymentGateway,
    invoice_id: uuid.UUID,
    amount_cents: int | None,
    reason: str,
    operator_id: uuid.UUID,
    now: datetime,
) -> Refund:
    """Give `amount_cents` (default: what is left) back on the invoice; the refund stored.
    `GatewayUnavailable` leaves it pending: the same request sends it again."""
    async with database.unit_of_work() as session:
        pending = await begin(session, invoice_id, amount_cents, reason, operator_id)
    refunded = await gateway.refund(
        pending.gateway_payment_id,
        pending.amount_cents,
        idempotency_key=pending.idempotency_key,
        metadata=metadata_for(pending.organization_id, pending.invoice_id, pending.idempotency_key),
    )
    async with database.unit_of_work() as session:
        stored = await RefundRepository(session).get_or_raise(pending.refund_id, lock=True)
        if stored.status == RefundStatus.PENDING:
            stored.status = refunded.status
            stored.gateway_refund_id = refunded.id
            stored.failure_code = refunded.failure_code
            await audit.record(
                session, f"refund.{refunded.status}", now=now,
                organization_id=stored.organization_id, actor_id=operator_id,
                target=("invoice", stored.invoice_id), number=stored.number,
                amount_usd=str(dollars(stored.amount_cents)), reason=stored.reason,
                code=refunded.failure_code,
            )  # fmt: skip
        return stored
