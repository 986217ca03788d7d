"""What billing tells an organisation's owners by mail, once the change is committed: a
receipt when an invoice is paid, and a notice when a payment is refused (with the next try)."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from apex.billing.models import Invoice
from apex.billing.money import dollars
from apex.identity.models import Role
from apex.identity.repository import MemberRepository
from apex.kit.mail import Mailer, send_after_commit


async def _mail_owners(
    session: AsyncSession, mailer: Mailer, organization_id: uuid.UUID, subject: str, text: str
) -> None:
    for membership, email in await MemberRepository(session, organization_id).all():
        if membership.role == Role.OWNER:
            send_after_commit(session, mailer, email, subject, text)


async def receipt(session: AsyncSession, mailer: Mailer | None, invoice: Invoice) -> None:
    if mailer is None:
        return
    text = (
        f"Thank you: invoice {invoice.number} of ${dollars(invoice.total_cents):,} "
        f"({invoice.period_start:%Y-%m-%d} to {invoice.period_end:%Y-%m-%d}) is paid.\n\n"
        f"The invoice: GET /api/v1/billing/invoices/{invoice.id}/html\n"
    )
    await _mail_owners(
        session, mailer, invoice.organization_id, f"Receipt for Apex invoice {invoice.number}", text
    )


async def payment_refused(
    session: AsyncSession, mailer: Mailer | None, invoice: Invoice, code: str | None
) -> None:
    if mailer is None:
        return
    retry = (
        f"We will try again on {invoice.next_attempt_at:%Y-%m-%d}."
        if invoice.next_attempt_at
        else "It will not be tried again: the subscription has ended and the plan is Free."
    )
    text = (
        f"The payment of invoice {invoice.number} (${dollars(invoice.total_cents):,}) was "
        f"refused by the bank ({code or 'no reason given'}). {retry}\n\n"
        "Update the card with a new checkout (POST /api/v1/billing/checkout), then pay the "
        f"invoice (POST /api/v1/billing/invoices/{invoice.id}/pay).\n"
    )
    await _mail_owners(
        session, mailer, invoice.organization_id,
        f"Payment refused for Apex invoice {invoice.number}", text,
    )  # fmt: skip
