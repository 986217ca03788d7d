"""What billing tells an organisation's owners by mail, once the change is committed: a
renewal's invoice when it is issued, a receipt when an invoice is paid, a notice when a
payment is refused (with the next try), and a warning when the month's usage records
reach 80% and 100% of the plan's quota."""

from __future__ import annotations

import uuid

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession

from apex.billing.models import Invoice
from apex.billing.money import dollars
from apex.billing.plans import Plan
from apex.billing.repository import InvoiceRepository
from apex.identity.models import Role
from apex.identity.repository import MemberRepository
from apex.kit.db import Database
from apex.kit.errors import UPGRADE_CHECKOUT
from apex.kit.mail import Mailer, send_after_commit

WARNING_TTL_SECONDS = 40 * 86_400  # longer than a month


async def _mail_owners(
    session: AsyncSession, mailer: Mailer, organization_id: uuid.UUID, subject: str, text: str
) -> None:
    for membership, email in await MemberRepository(session, organization_id).all():
        if membership.role == Role.OWNER:
            send_after_commit(session, mailer, email, subject, text)


async def invoice_issued(session: AsyncSession, mailer: Mailer | None, invoice: Invoice) -> None:
    """A renewal's invoice, line by line, before it is charged."""
    if mailer is None or invoice.total_cents <= 0:
        return
    lines = await InvoiceRepository(session).lines(invoice.id)
    listed = "".join(f"- {line.description}: ${dollars(line.amount_cents):,}\n" for line in lines)
    tax = f"- tax: ${dollars(invoice.tax_cents):,}\n" if invoice.tax_cents else ""
    text = (
        f"Apex invoice {invoice.number}, {invoice.period_start:%Y-%m-%d} to "
        f"{invoice.period_end:%Y-%m-%d}: ${dollars(invoice.total_cents):,}.\n\n{listed}{tax}\n"
        "It is charged to the card on file now; a receipt follows once it is paid.\n"
        f"The invoice: GET /api/v1/billing/invoices/{invoice.id}/html\n"
    )
    await _mail_owners(
        session, mailer, invoice.organization_id, f"Apex invoice {invoice.number}", text
    )


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


async def quota_reached(
    session: AsyncSession, mailer: Mailer, organization_id: uuid.UUID, plan: Plan, percent: int
) -> None:
    limit = plan.records_per_month or 0
    upgrade = plan.next_tier
    offer = (
        f"The {upgrade.value.capitalize()} plan includes more: POST {UPGRADE_CHECKOUT}.\n"
        if upgrade
        else ""
    )
    state = (
        "Records past it are refused until the month ends."
        if percent >= 100
        else "Records past it will be refused until the month ends."
    )
    text = (
        f"Your organisation has used {percent}% of its {limit:,} usage records this month "
        f"on the {plan.tier.value.capitalize()} plan. {state}\n{offer}"
    )
    await _mail_owners(
        session, mailer, organization_id,
        f"Apex: {percent}% of this month's usage records used", text,
    )  # fmt: skip


class MailedQuotaWarnings:
    """`usage.quota.QuotaWarnings` that mails the owners, once per organisation, month and
    threshold across every instance (the first to claim it in Redis sends it)."""

    def __init__(self, redis: Redis, database: Database, mailer: Mailer) -> None:
        self.redis = redis
        self.database = database
        self.mailer = mailer

    async def reached(
        self, organization_id: uuid.UUID, plan: Plan, period: str, percent: int
    ) -> None:
        key = f"apex:quota-warning:records:{organization_id}:{period}:{percent}"
        if not await self.redis.set(key, "1", nx=True, ex=WARNING_TTL_SECONDS):
            return
        async with self.database.unit_of_work() as session:
            await quota_reached(session, self.mailer, organization_id, plan, percent)
