"""An invoice as the API shows it, and as a printable HTML page (no script, no remote asset)."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from html import escape

from apex.billing.models import Invoice, InvoiceLine, Payment, Refund, RefundStatus
from apex.billing.money import dollars
from apex.billing.schemas import InvoiceLineOut, InvoiceOut, PaymentOut, RefundOut


def refund_out(refund: Refund) -> RefundOut:
    return RefundOut(
        id=refund.id,
        invoice_id=refund.invoice_id,
        number=refund.number,
        amount_usd=dollars(refund.amount_cents),
        reason=refund.reason,
        status=refund.status,
        failure_code=refund.failure_code,
        created_at=refund.created_at,
    )


def invoice_out(
    invoice: Invoice,
    lines: Sequence[InvoiceLine] = (),
    payments: Sequence[Payment] = (),
    refunds: Sequence[Refund] = (),
) -> InvoiceOut:
    refunded = sum(r.amount_cents for r in refunds if r.status == RefundStatus.SUCCEEDED)
    return InvoiceOut(
        id=invoice.id,
        number=invoice.number,
        reason=invoice.reason,
        status=invoice.status,
        currency=invoice.currency,
        period_start=invoice.period_start,
        period_end=invoice.period_end,
        subtotal_usd=dollars(invoice.subtotal_cents),
        tax_rate=Decimal(invoice.tax_rate),
        tax_usd=dollars(invoice.tax_cents),
        total_usd=dollars(invoice.total_cents),
        issued_at=invoice.issued_at,
        paid_at=invoice.paid_at,
        next_attempt_at=invoice.next_attempt_at,
        lines=[
            InvoiceLineOut(
                kind=line.kind,
                description=line.description,
                amount_usd=dollars(line.amount_cents),
                quantity=line.quantity,
                unit_price_usd=None if line.unit_price is None else Decimal(line.unit_price),
                usage_start=line.usage_start,
                usage_end=line.usage_end,
            )
            for line in lines
        ],
        payments=[
            PaymentOut(
                attempt=payment.attempt,
                status=payment.status,
                amount_usd=dollars(payment.amount_cents),
                failure_code=payment.failure_code,
                created_at=payment.created_at,
            )
            for payment in payments
        ],
        refunded_usd=dollars(refunded),
        refunds=[refund_out(refund) for refund in refunds],
    )


def invoice_html(invoice: InvoiceOut, organization_name: str) -> str:
    rows = "".join(
        f"<tr><td>{escape(line.description)}</td><td class=n>${line.amount_usd:,.2f}</td></tr>"
        for line in invoice.lines
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Invoice {invoice.number}</title>
<style>body{{font:14px system-ui,sans-serif;max-width:42rem;margin:2rem auto;color:#111}}
table{{width:100%;border-collapse:collapse}}td,th{{padding:.4rem;border-bottom:1px solid #ddd}}
.n{{text-align:right;font-variant-numeric:tabular-nums}}</style></head><body>
<h1>Invoice {invoice.number}</h1>
<p>{escape(organization_name)} · issued {invoice.issued_at:%Y-%m-%d} · period
{invoice.period_start:%Y-%m-%d} to {invoice.period_end:%Y-%m-%d} ·
<strong>{escape(invoice.status)}</strong></p>
<table><thead><tr><th>Item</th><th class=n>Amount</th></tr></thead><tbody>{rows}</tbody>
<tfoot><tr><td>Subtotal</td><td class=n>${invoice.subtotal_usd:,.2f}</td></tr>
<tr><td>Tax ({invoice.tax_rate * 100:.2f}%)</td><td class=n>${invoice.tax_usd:,.2f}</td></tr>
<tr><th>Total ({escape(invoice.currency.upper())})</th>
<th class=n>${invoice.total_usd:,.2f}</th></tr>
</tfoot></table></body></html>
"""
