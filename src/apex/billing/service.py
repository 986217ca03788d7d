"""Subscriptions and invoices: the state machine, its history, and what each change bills.

    (no row: Free) ──trial──▶ trialing ──card at trial end──▶ active ◀──paid── past_due
          │                      │ no card: canceled (Free)     │ renewal not paid ──┘
          └──checkout (card)─────────────────────────────────▶ active
    active: upgrade now (prorated invoice) · downgrade or cancel at period end · reactivate
    past_due: retried on the dunning schedule; the last failure cancels (back to Free)

Every change appends a `SubscriptionEvent` (with the MRR before and after) in the same
transaction, and puts the organisation's `tier` (what every limit reads) in step with the
subscription: the cached organisation is invalidated after commit, on every instance.
Functions take `now`: the caller's clock decides what time it is.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

from sqlalchemy.ext.asyncio import AsyncSession

from apex.agents.repository import RunRepository
from apex.audit import service as audit
from apex.billing import mails
from apex.billing.feed import publish_after_commit
from apex.billing.models import (
    Invoice,
    InvoiceLine,
    InvoiceStatus,
    Payment,
    PaymentStatus,
    Subscription,
    SubscriptionEvent,
    SubscriptionEventKind,
    SubscriptionStatus,
)
from apex.billing.money import (
    CENT,
    MILLION,
    add_month,
    dollars,
    half_up_cents,
    prorated_cents,
    tax_cents,
    to_cents,
)
from apex.billing.plans import CATALOGUE_VERSION, PLANS, plan_for
from apex.billing.repository import (
    InvoiceRepository,
    PaymentRepository,
    SubscriptionEventRepository,
    SubscriptionRepository,
)
from apex.findings.models import SavingsMeasurement
from apex.findings.service import bill_savings
from apex.identity.models import Organization, Tier
from apex.identity.repository import OrganizationRepository
from apex.identity.service import organization_key
from apex.kit.cache import invalidate_after_commit
from apex.kit.errors import Conflict, NotFound, ValidationFailed
from apex.kit.mail import Mailer
from apex.usage.models import nanos_to_usd
from apex.usage.rollups import MeterRepository
from apex.usage.spend import Window, hour_floor

# Days after a failed collection at which it is tried again; a failure after the last one
# gives up: the invoice is uncollectible and the organisation goes back to Free.
DUNNING_RETRY_DAYS = (1, 3, 5)
PAYING = (SubscriptionStatus.ACTIVE, SubscriptionStatus.PAST_DUE)


def monthly_cents(tier: str, version: str | None = None) -> int:
    return to_cents(plan_for(tier, version).base_fee_usd)


def mrr_cents(tier: str, status: str, version: str | None = None) -> int:
    """What the subscription brings in a month: its base fee while paying (a trial or a
    canceled subscription brings nothing)."""
    return monthly_cents(tier, version) if status in PAYING else 0


@dataclass(frozen=True, slots=True)
class Line:
    kind: str
    description: str
    amount_cents: int
    quantity: int | None = None
    unit_price: Decimal | None = None
    usage: Window | None = None


def _monthly(subscription: Subscription) -> int:
    """The subscription's base fee, at the prices of the catalogue it was bought under."""
    return monthly_cents(subscription.tier, subscription.catalogue_version)


async def subscription_of(session: AsyncSession, organization_id: uuid.UUID) -> Subscription | None:
    return await SubscriptionRepository(session).of(organization_id)


async def _locked(session: AsyncSession, organization_id: uuid.UUID) -> Subscription | None:
    """The subscription row locked for the change (after the organisation's, which every
    change of one organisation locks first, so changes are serialised even before a
    subscription row exists)."""
    await OrganizationRepository(session).get_or_raise(organization_id, lock=True)
    return await SubscriptionRepository(session).of(organization_id, lock=True)


async def _set_tier(session: AsyncSession, organization_id: uuid.UUID, tier: str) -> None:
    organization: Organization = await OrganizationRepository(session).get_or_raise(organization_id)
    if organization.tier != tier:
        organization.tier = tier
        invalidate_after_commit(session, organization_key(organization_id))


async def _record(
    session: AsyncSession,
    subscription: Subscription,
    kind: SubscriptionEventKind,
    *,
    from_tier: str,
    from_status: str,
    now: datetime,
    from_version: str | None = None,
) -> None:
    event = SubscriptionEvent(
        organization_id=subscription.organization_id,
        kind=kind.value,
        from_tier=from_tier,
        to_tier=subscription.tier,
        status=subscription.status,
        mrr_before_cents=mrr_cents(
            from_tier, from_status, from_version or subscription.catalogue_version
        ),
        mrr_after_cents=mrr_cents(
            subscription.tier, subscription.status, subscription.catalogue_version
        ),
        occurred_at=now,
    )
    await SubscriptionEventRepository(session).add(event)
    await audit.record(
        session, f"subscription.{kind.value}", now=now,
        organization_id=subscription.organization_id, target=("subscription", subscription.id),
        from_tier=from_tier, to_tier=subscription.tier, status=subscription.status,
    )  # fmt: skip
    publish_after_commit(session, event)
    await _set_tier(
        session,
        subscription.organization_id,
        subscription.tier if subscription.status != SubscriptionStatus.CANCELED else Tier.FREE,
    )


async def issue_invoice(
    session: AsyncSession,
    organization_id: uuid.UUID,
    reason: str,
    lines: list[Line],
    *,
    period: tuple[datetime, datetime],
    tax_rate: Decimal,
    now: datetime,
) -> Invoice:
    """A finalized invoice: its lines and total never change. Collection is due at once;
    an invoice of nothing is paid as issued."""
    invoices = InvoiceRepository(session)
    subtotal = sum(line.amount_cents for line in lines)
    tax = tax_cents(subtotal, tax_rate)
    total = subtotal + tax
    invoice = Invoice(
        organization_id=organization_id,
        number=await invoices.next_number(organization_id),
        reason=reason,
        status=InvoiceStatus.OPEN if total > 0 else InvoiceStatus.PAID,
        period_start=period[0],
        period_end=period[1],
        subtotal_cents=subtotal,
        tax_rate=str(tax_rate),
        tax_cents=tax,
        total_cents=total,
        next_attempt_at=now if total > 0 else None,
        issued_at=now,
        paid_at=None if total > 0 else now,
    )
    await invoices.add(invoice)
    for position, line in enumerate(lines, start=1):
        session.add(
            InvoiceLine(
                invoice_id=invoice.id,
                position=position,
                kind=line.kind,
                description=line.description,
                amount_cents=line.amount_cents,
                quantity=line.quantity,
                unit_price=None if line.unit_price is None else str(line.unit_price),
                usage_start=line.usage.start if line.usage else None,
                usage_end=line.usage.end if line.usage else None,
            )
        )
    await session.flush()
    return invoice


def _base_fee(tier: str, start: datetime, end: datetime, version: str | None = None) -> Line:
    name = tier.capitalize()
    span = f"{start:%Y-%m-%d} to {end:%Y-%m-%d}"
    return Line("base_fee", f"{name} plan, {span}", monthly_cents(tier, version))


def paid_tier(tier: str) -> str:
    try:
        plan = plan_for(tier)
    except ValueError:
        raise ValidationFailed(
            "Unknown plan.", errors=[{"field": "tier", "message": f"one of {list(PLANS)}"}]
        ) from None
    if plan.tier == Tier.FREE:
        raise ValidationFailed(
            "Free is not bought: cancel the subscription instead.",
            errors=[{"field": "tier", "message": "must be a paid plan"}],
        )
    return plan.tier.value


async def start_trial(
    session: AsyncSession, organization_id: uuid.UUID, *, now: datetime
) -> Subscription:
    """The Early plan free for its trial days, once per organisation, no card needed."""
    subscription = await _locked(session, organization_id)
    if subscription is not None:
        raise Conflict("This organisation has had a subscription already; trials are for new ones.")
    plan = PLANS[Tier.EARLY]
    subscription = Subscription(
        organization_id=organization_id,
        tier=plan.tier.value,
        status=SubscriptionStatus.TRIALING,
        catalogue_version=CATALOGUE_VERSION,
        period_start=now,
        period_end=now + timedelta(days=plan.trial_days),
    )
    await SubscriptionRepository(session).add(subscription)
    await _record(
        session, subscription, SubscriptionEventKind.TRIAL_STARTED,
        from_tier=Tier.FREE, from_status=SubscriptionStatus.CANCELED, now=now,
    )  # fmt: skip
    return subscription


async def complete_checkout(
    session: AsyncSession,
    organization_id: uuid.UUID,
    tier: str,
    customer_id: str,
    *,
    tax_rate: Decimal,
    now: datetime,
    completed_at: datetime | None = None,
) -> Invoice | None:
    """The customer saved a card on the gateway's page for `tier`: subscribe (from Free, a
    trial or a canceled subscription: a new period from now, its fee invoiced), or upgrade
    an active subscription at once. Returns the invoice to collect, if any. A checkout
    completed before the one applied last (`completed_at`, the gateway's time, arriving
    late) changes nothing."""
    tier = paid_tier(tier)
    subscription = await _locked(session, organization_id)
    if subscription is not None and completed_at is not None:
        if subscription.checkout_at is not None and subscription.checkout_at > completed_at:
            return None
        subscription.checkout_at = completed_at
    if subscription is not None and subscription.status in PAYING:
        subscription.gateway_customer_id = customer_id
        if monthly_cents(tier) > _monthly(subscription):
            return await _upgrade(session, subscription, tier, tax_rate=tax_rate, now=now)
        return None  # the card is updated; a lower plan goes through change_plan
    from_tier = subscription.tier if subscription else Tier.FREE.value
    from_status = subscription.status if subscription else SubscriptionStatus.CANCELED.value
    from_version = subscription.catalogue_version if subscription else None
    end = add_month(now)
    if subscription is None:
        subscription = Subscription(organization_id=organization_id, checkout_at=completed_at)
        session.add(subscription)
    subscription.tier = tier
    subscription.status = SubscriptionStatus.ACTIVE
    subscription.catalogue_version = CATALOGUE_VERSION  # a new start: today's prices
    subscription.period_start, subscription.period_end = now, end
    subscription.scheduled_tier = None
    subscription.cancel_at_period_end = False
    subscription.gateway_customer_id = customer_id
    await session.flush()
    await _record(
        session, subscription, SubscriptionEventKind.SUBSCRIBED,
        from_tier=from_tier, from_status=from_status, now=now, from_version=from_version,
    )  # fmt: skip
    return await issue_invoice(
        session, organization_id, "subscription_create", [_base_fee(tier, now, end)],
        period=(now, end), tax_rate=tax_rate, now=now,
    )  # fmt: skip


async def _upgrade(
    session: AsyncSession, subscription: Subscription, tier: str, *, tax_rate: Decimal,
    now: datetime,
) -> Invoice:  # fmt: skip
    """The new plan from now: the unused time on the old plan is credited and the rest of
    the period on the new one charged, each prorated by the second."""
    old, old_version = subscription.tier, subscription.catalogue_version
    start, end = subscription.period_start, subscription.period_end
    remaining, period = end - now, end - start
    lines = [
        Line("proration", f"Unused time on {old.capitalize()} after {now:%Y-%m-%d %H:%M} UTC",
             -prorated_cents(monthly_cents(old, old_version), remaining, period)),
        Line("proration", f"Remaining time on {tier.capitalize()} until {end:%Y-%m-%d}",
             prorated_cents(monthly_cents(tier), remaining, period)),
    ]  # fmt: skip
    status = subscription.status
    subscription.tier = tier
    subscription.catalogue_version = CATALOGUE_VERSION  # a plan change takes today's prices
    subscription.scheduled_tier = None
    await session.flush()
    await _record(
        session, subscription, SubscriptionEventKind.UPGRADED,
        from_tier=old, from_status=status, now=now, from_version=old_version,
    )  # fmt: skip
    return await issue_invoice(
        session, subscription.organization_id, "subscription_update", lines,
        period=(now, end), tax_rate=tax_rate, now=now,
    )  # fmt: skip


async def change_plan(
    session: AsyncSession, organization_id: uuid.UUID, tier: str, *, tax_rate: Decimal,
    now: datetime,
) -> tuple[Subscription, Invoice | None]:  # fmt: skip
    """Upgrade at once (prorated invoice) or downgrade at the end of the period (the
    current plan's limits and features until then)."""
    tier = paid_tier(tier)
    subscription = await _locked(session, organization_id)
    if subscription is None or subscription.status not in PAYING:
        raise Conflict(
            "There is no paid subscription to change: start one with a checkout.",
            checkout="/api/v1/billing/checkout",
        )
    if monthly_cents(tier) > _monthly(subscription):
        return subscription, await _upgrade(session, subscription, tier, tax_rate=tax_rate, now=now)
    if tier == subscription.tier:
        subscription.scheduled_tier = None  # stay: a scheduled downgrade is called off
        await session.flush()
        return subscription, None
    subscription.scheduled_tier = tier
    subscription.cancel_at_period_end = False
    await session.flush()
    await _record(
        session, subscription, SubscriptionEventKind.DOWNGRADE_SCHEDULED,
        from_tier=subscription.tier, from_status=subscription.status, now=now,
    )  # fmt: skip
    return subscription, None


async def cancel(
    session: AsyncSession, organization_id: uuid.UUID, *, now: datetime
) -> Subscription:
    """Back to Free at the end of the period; until then nothing changes."""
    subscription = await _locked(session, organization_id)
    if subscription is None or subscription.status == SubscriptionStatus.CANCELED:
        raise Conflict("There is no subscription to cancel.")
    if subscription.status == SubscriptionStatus.TRIALING:
        return await _end(session, subscription, now)
    if not subscription.cancel_at_period_end:
        subscription.cancel_at_period_end = True
        subscription.scheduled_tier = None
        await session.flush()
        await _record(
            session, subscription, SubscriptionEventKind.CANCEL_SCHEDULED,
            from_tier=subscription.tier, from_status=subscription.status, now=now,
        )  # fmt: skip
    return subscription


async def reactivate(
    session: AsyncSession, organization_id: uuid.UUID, *, now: datetime
) -> Subscription:
    """Call off a cancellation or a downgrade scheduled for the end of the period."""
    subscription = await _locked(session, organization_id)
    if subscription is None or subscription.status not in PAYING:
        raise Conflict("There is no subscription to keep: start one with a checkout.")
    if subscription.cancel_at_period_end or subscription.scheduled_tier:
        subscription.cancel_at_period_end = False
        subscription.scheduled_tier = None
        await session.flush()
        await _record(
            session, subscription, SubscriptionEventKind.REACTIVATED,
            from_tier=subscription.tier, from_status=subscription.status, now=now,
        )  # fmt: skip
    return subscription


async def _end(session: AsyncSession, subscription: Subscription, now: datetime) -> Subscription:
    old_tier, old_status = subscription.tier, subscription.status
    subscription.status = SubscriptionStatus.CANCELED
    subscription.cancel_at_period_end = False
    subscription.scheduled_tier = None
    await session.flush()
    await _record(
        session, subscription, SubscriptionEventKind.CANCELED,
        from_tier=old_tier, from_status=old_status, now=now,
    )  # fmt: skip
    return subscription


def usage_window(start: datetime, end: datetime) -> Window:
    """The usage a period bills: whole UTC hours (the rollups' grain), from the hour the
    period starts in to the hour it ends in, so consecutive periods tile without overlap."""
    return Window(hour_floor(start), hour_floor(end))


def metered_cents(tokens: int, price_per_million: Decimal) -> int:
    return half_up_cents(Decimal(tokens) * price_per_million / MILLION)


async def _usage_lines(
    session: AsyncSession,
    organization_id: uuid.UUID,
    tier: str,
    window: Window,
    version: str | None = None,
) -> list[Line]:
    """The period's analysed tokens (read from the rollups), at the plan's price, and its
    agent runs that finished with a report, at the plan's price each; then,
    for every earlier period billed before, the records that arrived after its invoice (an
    adjustment: what the period's tokens cost now minus what was billed for it)."""
    lines: list[Line] = []
    price = plan_for(tier, version).analysed_tokens_per_million_usd
    tokens = (await MeterRepository(session).read(organization_id, window)).tokens.total
    if tokens and price:
        lines.append(Line(
            "usage", f"{tokens:,} analysed tokens, {_span(window)}, at ${price} a million",
            metered_cents(tokens, price), tokens, price, window,
        ))  # fmt: skip
    runs = await RunRepository(session).succeeded_between(organization_id, window.start, window.end)
    run_price = plan_for(tier, version).agent_run_usd
    if runs and run_price:
        lines.append(Line(
            "agent_runs", f"{runs:,} agent runs, {_span(window)}, at ${run_price} each",
            half_up_cents(runs * run_price), runs, run_price, window,
        ))  # fmt: skip
    for billed in await InvoiceRepository(session).metered_windows(organization_id):
        if billed.window == window:
            continue
        now_tokens = (
            await MeterRepository(session).read(organization_id, billed.window)
        ).tokens.total
        if now_tokens == billed.tokens:
            continue
        amount = metered_cents(now_tokens, billed.price) - billed.cents
        lines.append(Line(
            "usage_adjustment",
            f"{now_tokens - billed.tokens:+,} analysed tokens that arrived after "
            f"{_span(billed.window)} was invoiced, at ${billed.price} a million",
            amount, now_tokens - billed.tokens, billed.price, billed.window,
        ))  # fmt: skip
    return lines


def _span(window: Window) -> str:
    return f"{window.start:%Y-%m-%d %H:%M} to {window.end:%Y-%m-%d %H:%M} UTC"


async def close_period(
    session: AsyncSession, organization_id: uuid.UUID, *, tax_rate: Decimal, now: datetime
) -> Invoice | None:
    """The period ended: end a trial (paid if a card is on file, else Free), apply a
    scheduled cancellation or downgrade, and renew with the next period's invoice."""
    subscription = await _locked(session, organization_id)
    if (
        subscription is None
        or subscription.period_end > now
        or subscription.status not in (SubscriptionStatus.ACTIVE, SubscriptionStatus.TRIALING)
    ):
        return None  # another process closed it first
    if subscription.status == SubscriptionStatus.TRIALING:
        if subscription.gateway_customer_id is None:
            await _end(session, subscription, now)
            return None
        return await complete_checkout(
            session, organization_id, subscription.tier, subscription.gateway_customer_id,
            tax_rate=tax_rate, now=subscription.period_end,
        )  # fmt: skip
    arrears, measurements = await _arrears(session, subscription)
    if subscription.cancel_at_period_end:
        await _end(session, subscription, subscription.period_end)
        if not arrears:
            return None
        final = (subscription.period_start, subscription.period_end)
        invoice = await issue_invoice(
            session, organization_id, "subscription_final", arrears,
            period=final, tax_rate=tax_rate, now=now,
        )  # fmt: skip
        _billed_on(invoice, measurements)
        return invoice
    old_tier, status = subscription.tier, subscription.status
    old_version = subscription.catalogue_version
    start, end = subscription.period_end, add_month(subscription.period_end)
    subscription.period_start, subscription.period_end = start, end
    kind = SubscriptionEventKind.RENEWED
    if subscription.scheduled_tier:
        subscription.tier, subscription.scheduled_tier = subscription.scheduled_tier, None
        subscription.catalogue_version = CATALOGUE_VERSION
        kind = SubscriptionEventKind.DOWNGRADED
    await session.flush()
    await _record(
        session, subscription, kind, from_tier=old_tier, from_status=status, now=start,
        from_version=old_version,
    )  # fmt: skip
    lines = [_base_fee(subscription.tier, start, end, subscription.catalogue_version), *arrears]
    invoice = await issue_invoice(
        session, organization_id, "subscription_cycle", lines,
        period=(start, end), tax_rate=tax_rate, now=now,
    )  # fmt: skip
    _billed_on(invoice, measurements)
    return invoice


async def _arrears(
    session: AsyncSession, subscription: Subscription
) -> tuple[list[Line], list[SavingsMeasurement]]:
    """What the period that ended owes beyond its base fee (billed in arrears, at the
    period's plan): metered usage, its adjustments, the share of verified savings."""
    window = usage_window(subscription.period_start, subscription.period_end)
    version = subscription.catalogue_version
    lines = await _usage_lines(
        session, subscription.organization_id, subscription.tier, window, version
    )
    share = plan_for(subscription.tier, version).savings_share
    if not share:
        return lines, []
    billed = await bill_savings(session, subscription.organization_id, window, share)
    percent = format((share * 100).normalize(), "f")
    for saving in billed:
        measured = saving.measurement
        if measured.amount_cents <= 0:
            continue  # kept as evidence: a saving that did not materialise bills nothing
        lines.append(Line(
            "savings_share",
            f"{percent}% of the saving verified on \u201c{saving.finding.title}\u201d: "
            f"${_to_cent(measured.saving_nanos)} over {measured.calls:,} calls, "
            f"{_span(Window(measured.window_start, measured.window_end))}",
            measured.amount_cents,
        ))  # fmt: skip
    return lines, [saving.measurement for saving in billed]


def _to_cent(nanos: int) -> Decimal:
    return nanos_to_usd(nanos).quantize(CENT, ROUND_HALF_UP)


def _billed_on(invoice: Invoice, measurements: list[SavingsMeasurement]) -> None:
    for measurement in measurements:
        measurement.invoice_id = invoice.id


@dataclass(frozen=True, slots=True)
class Attempt:
    """A collection attempt stored (pending) before the gateway is called."""

    payment_id: uuid.UUID
    invoice_id: uuid.UUID
    organization_id: uuid.UUID
    customer_id: str | None
    amount_cents: int
    currency: str
    idempotency_key: str


def idempotency_key(invoice_id: uuid.UUID, attempt: int) -> str:
    return f"apex-invoice-{invoice_id}-attempt-{attempt}"


async def begin_attempt(
    session: AsyncSession, invoice_id: uuid.UUID, organization_id: uuid.UUID | None = None
) -> Attempt | None:
    """The attempt to send to the gateway: the pending one if an earlier try did not learn
    its outcome (a crash, a timeout: the same key, so the gateway charges once), else a new
    one. None when the invoice needs no collection."""
    invoices = InvoiceRepository(session)
    invoice = await invoices.locked(invoice_id)
    if invoice is None or (organization_id and invoice.organization_id != organization_id):
        raise NotFound("No such invoice.")
    if invoice.status != InvoiceStatus.OPEN:
        return None
    payments = PaymentRepository(session)
    payment = await payments.pending_for(invoice.id)
    if payment is None:
        invoice.attempts += 1
        payment = Payment(
            invoice_id=invoice.id,
            organization_id=invoice.organization_id,
            attempt=invoice.attempts,
            idempotency_key=idempotency_key(invoice.id, invoice.attempts),
            amount_cents=invoice.total_cents,
            status=PaymentStatus.PENDING,
        )
        await payments.add(payment)
    subscription = await SubscriptionRepository(session).of(invoice.organization_id)
    return Attempt(
        payment_id=payment.id,
        invoice_id=invoice.id,
        organization_id=invoice.organization_id,
        customer_id=subscription.gateway_customer_id if subscription else None,
        amount_cents=payment.amount_cents,
        currency=invoice.currency,
        idempotency_key=payment.idempotency_key,
    )


async def settle(
    session: AsyncSession,
    idempotency_key: str,
    status: str,
    *,
    gateway_payment_id: str | None,
    failure_code: str | None,
    now: datetime,
    mailer: Mailer | None = None,
) -> Payment | None:
    """Store what the gateway said about an attempt (from its answer or from a webhook,
    whichever comes first, any number of times): a success is final; a failure moves the
    invoice along the dunning schedule."""
    payment = await PaymentRepository(session).by_key(idempotency_key, lock=True)
    if payment is None:
        return None
    invoice = await InvoiceRepository(session).get_or_raise(payment.invoice_id, lock=True)
    if payment.status == status:
        return payment  # already known
    if payment.status != PaymentStatus.PENDING and status != PaymentStatus.SUCCEEDED:
        return payment  # settled already: only a success (3-D Secure passed) changes it
    payment.status = status
    payment.gateway_payment_id = gateway_payment_id or payment.gateway_payment_id
    payment.failure_code = failure_code
    if status == PaymentStatus.SUCCEEDED:
        await _paid(session, invoice, now)
        await mails.receipt(session, mailer, invoice)
    elif invoice.status == InvoiceStatus.OPEN and payment.attempt == invoice.attempts:
        await _failed(session, invoice, now)
        await mails.payment_refused(session, mailer, invoice, failure_code)
    await session.flush()
    return payment


async def _audit_payment(
    session: AsyncSession, action: str, invoice: Invoice, now: datetime
) -> None:
    await audit.record(
        session, action, now=now, organization_id=invoice.organization_id,
        target=("invoice", invoice.id), number=invoice.number,
        amount_usd=str(dollars(invoice.total_cents)), attempt=invoice.attempts,
    )  # fmt: skip


async def _paid(session: AsyncSession, invoice: Invoice, now: datetime) -> None:
    invoice.status = InvoiceStatus.PAID
    invoice.paid_at = now
    invoice.next_attempt_at = None
    await session.flush()
    await _audit_payment(session, "payment.succeeded", invoice, now)
    subscription = await SubscriptionRepository(session).of(invoice.organization_id, lock=True)
    if subscription is None or subscription.status != SubscriptionStatus.PAST_DUE:
        return
    if await InvoiceRepository(session).open_count(invoice.organization_id) == 0:
        subscription.status = SubscriptionStatus.ACTIVE
        await session.flush()
        await _record(
            session, subscription, SubscriptionEventKind.RECOVERED,
            from_tier=subscription.tier, from_status=SubscriptionStatus.PAST_DUE, now=now,
        )  # fmt: skip


async def _failed(session: AsyncSession, invoice: Invoice, now: datetime) -> None:
    """Past due after the first failure; retried after each of DUNNING_RETRY_DAYS; the
    failure after the last retry gives up and cancels the subscription."""
    await _audit_payment(session, "payment.failed", invoice, now)
    subscription = await SubscriptionRepository(session).of(invoice.organization_id, lock=True)
    if invoice.attempts <= len(DUNNING_RETRY_DAYS):
        invoice.next_attempt_at = now + timedelta(days=DUNNING_RETRY_DAYS[invoice.attempts - 1])
        if subscription is not None and subscription.status == SubscriptionStatus.ACTIVE:
            subscription.status = SubscriptionStatus.PAST_DUE
            await session.flush()
            await _record(
                session, subscription, SubscriptionEventKind.PAST_DUE,
                from_tier=subscription.tier, from_status=SubscriptionStatus.ACTIVE, now=now,
            )  # fmt: skip
        return
    invoice.status = InvoiceStatus.UNCOLLECTIBLE
    invoice.next_attempt_at = None
    await session.flush()
    if subscription is not None and subscription.status in PAYING:
        await _end(session, subscription, now)
