"""Billing under /api/v1/billing: the catalogue, the subscription, checkout, invoices, and
the gateway's webhook.

Routes that call the payment gateway open their own units of work instead of `SessionDep`:
a network call never runs inside a transaction, and what it changed at the gateway is
stored before and after it (see `apex.billing.collection`).
"""

from __future__ import annotations

import contextlib
import uuid
from datetime import timedelta
from decimal import Decimal
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import HTMLResponse
from sqlalchemy.ext.asyncio import AsyncSession

from apex.billing import analytics, collection, refunds, service, webhooks
from apex.billing.gateway import BadSignature, GatewayUnavailable, PaymentGateway, verify_signature
from apex.billing.invoices import invoice_html, invoice_out, refund_out
from apex.billing.models import PaymentStatus, RefundStatus, Subscription
from apex.billing.money import dollars, to_cents
from apex.billing.plans import CATALOGUE_VERSION, PLANS
from apex.billing.repository import (
    InvoiceRepository,
    PaymentRepository,
    RefundRepository,
    SubscriptionEventRepository,
)
from apex.billing.schemas import (
    CheckoutOut,
    InvoiceOut,
    MovementsOut,
    PlanChangeOut,
    PlanOut,
    RefundIn,
    RefundOut,
    RevenueOut,
    SubscriptionEventOut,
    SubscriptionOut,
    TierIn,
    WebhookOut,
)
from apex.billing.tasks import COLLECT_TASK
from apex.identity.deps import CurrentOperator, Principal, RequirePermission
from apex.identity.repository import OrganizationRepository, UserRepository
from apex.kit.clock import UtcInstant
from apex.kit.db import Database
from apex.kit.deps import SessionDep
from apex.kit.errors import (
    BadRequest,
    Conflict,
    NotFound,
    PaymentFailed,
    ServiceUnavailable,
    ValidationFailed,
)
from apex.kit.queue import JobQueue

router = APIRouter(prefix="/api/v1/billing", tags=["billing"])
AUTH = PaymentStatus.REQUIRES_ACTION
Owner = Annotated[Principal, RequirePermission("billing:manage")]


def _gateway(request: Request) -> PaymentGateway:
    gateway: PaymentGateway | None = request.app.state.payments
    if gateway is None:
        raise ServiceUnavailable(
            "Payments are not configured on this installation (APEX_STRIPE_API_KEY).",
            retry_after=3600,
        )
    return gateway


def _subscription_out(
    organization_id: uuid.UUID, subscription: Subscription | None, tier: str
) -> SubscriptionOut:
    if subscription is None:
        return SubscriptionOut(
            organization_id=organization_id, tier=tier, status="none", period_start=None,
            period_end=None, scheduled_tier=None, cancel_at_period_end=False, card_on_file=False,
            monthly_fee_usd=dollars(service.monthly_cents(tier)),
            catalogue_version=CATALOGUE_VERSION,
        )  # fmt: skip
    return SubscriptionOut(
        organization_id=organization_id,
        tier=subscription.tier,
        status=subscription.status,
        period_start=subscription.period_start,
        period_end=subscription.period_end,
        scheduled_tier=subscription.scheduled_tier,
        cancel_at_period_end=subscription.cancel_at_period_end,
        card_on_file=subscription.gateway_customer_id is not None,
        monthly_fee_usd=dollars(
            service.monthly_cents(subscription.tier, subscription.catalogue_version)
        ),
        catalogue_version=subscription.catalogue_version,
    )


async def _current(session: AsyncSession, organization_id: uuid.UUID) -> SubscriptionOut:
    organization = await OrganizationRepository(session).get_or_raise(organization_id)
    subscription = await service.subscription_of(session, organization_id)
    return _subscription_out(organization_id, subscription, organization.tier)


@router.get("/plans", response_model=list[PlanOut])
async def plans() -> list[PlanOut]:
    """The plan catalogue: fees and every limit (public)."""
    return [
        PlanOut(
            tier=plan.tier.value,
            monthly_fee_usd=plan.base_fee_usd,
            catalogue_version=CATALOGUE_VERSION,
            savings_share=plan.savings_share,
            analysed_tokens_per_million_usd=plan.analysed_tokens_per_million_usd,
            agent_run_usd=plan.agent_run_usd,
            records_per_month=plan.records_per_month,
            agent_runs_per_day=plan.agent_runs_per_day,
            concurrent_agent_runs=plan.concurrent_agent_runs,
            api_requests_per_hour=plan.api_requests_per_hour,
            websocket_messages_per_minute=plan.websocket_messages_per_minute,
            seats=plan.seats,
            retention_days=plan.retention_days,
            trial_days=plan.trial_days,
        )
        for plan in PLANS.values()
    ]


@router.get("/subscription", response_model=SubscriptionOut)
async def subscription(principal: Owner, session: SessionDep) -> SubscriptionOut:
    return await _current(session, principal.organization_id)


@router.get("/subscription/events", response_model=list[SubscriptionEventOut])
async def subscription_events(principal: Owner, session: SessionDep) -> list[SubscriptionEventOut]:
    """The subscription's history, oldest first."""
    events = await SubscriptionEventRepository(session).of(principal.organization_id)
    return [
        SubscriptionEventOut(
            organization_id=event.organization_id,
            kind=event.kind,
            from_tier=event.from_tier,
            to_tier=event.to_tier,
            status=event.status,
            mrr_before_usd=dollars(event.mrr_before_cents),
            mrr_after_usd=dollars(event.mrr_after_cents),
            occurred_at=event.occurred_at,
        )
        for event in events
    ]


@router.post("/trial", status_code=201, response_model=SubscriptionOut)
async def start_trial(request: Request, principal: Owner, session: SessionDep) -> SubscriptionOut:
    """The Early plan for its trial days, no card needed (once per organisation)."""
    now = request.app.state.clock.now()
    subscription = await service.start_trial(session, principal.organization_id, now=now)
    return _subscription_out(principal.organization_id, subscription, subscription.tier)


@router.post("/checkout", response_model=CheckoutOut)
async def checkout(body: TierIn, request: Request, principal: Owner) -> CheckoutOut:
    """A hosted page of the payment gateway where the owner saves a card for `tier`; once
    the gateway reports it complete (webhook), the plan applies on every instance."""
    state = request.app.state
    tier = service.paid_tier(body.tier)
    gateway = _gateway(request)
    async with state.database.unit_of_work() as session:
        subscription = await service.subscription_of(session, principal.organization_id)
        customer = subscription.gateway_customer_id if subscription else None
        user = await UserRepository(session).get_or_raise(principal.user_id)
        organization = await OrganizationRepository(session).get_or_raise(principal.organization_id)
        email, name = user.email, organization.name
    if customer is None:
        customer = await gateway.customer(str(principal.organization_id), email, name)
    base = state.settings.public_url.rstrip("/")
    session_out = await gateway.checkout(
        customer,
        # Back to the browser app's billing page, which waits for the plan to change.
        success_url=f"{base}/?checkout=done#/billing",
        cancel_url=f"{base}/?checkout=canceled#/billing",
        metadata={"organization_id": str(principal.organization_id), "tier": tier},
    )
    return CheckoutOut(id=session_out.id, url=session_out.url)


@router.post("/subscription/change", response_model=PlanChangeOut)
async def change_plan(body: TierIn, request: Request, principal: Owner) -> PlanChangeOut:
    """A higher plan applies at once and its prorated difference is charged now; a lower
    one applies at the end of the period. The plan changes whatever the charge's outcome
    (the invoice shows it; an unpaid one goes through dunning), and a gateway that does not
    answer leaves the charge pending for the billing cycle to finish with the same key."""
    state = request.app.state
    async with state.database.unit_of_work() as session:
        subscription, invoice = await service.change_plan(
            session, principal.organization_id, body.tier,
            tax_rate=state.settings.billing_tax_rate, now=state.clock.now(),
        )  # fmt: skip
        current = _subscription_out(principal.organization_id, subscription, subscription.tier)
    invoice_view = None
    if invoice is not None:
        if state.payments is not None:
            with contextlib.suppress(GatewayUnavailable):
                await _collect(request, state.database, invoice.id, principal.organization_id)
        invoice_view = await _invoice_view(state.database, principal.organization_id, invoice.id)
    return PlanChangeOut(subscription=current, invoice=invoice_view)


@router.post("/subscription/cancel", response_model=SubscriptionOut)
async def cancel(request: Request, principal: Owner, session: SessionDep) -> SubscriptionOut:
    """Back to Free at the end of the period (a trial ends at once)."""
    now = request.app.state.clock.now()
    subscription = await service.cancel(session, principal.organization_id, now=now)
    return _subscription_out(principal.organization_id, subscription, subscription.tier)


@router.post("/subscription/reactivate", response_model=SubscriptionOut)
async def reactivate(request: Request, principal: Owner, session: SessionDep) -> SubscriptionOut:
    """Keep the subscription as it is: a scheduled cancellation or downgrade is called off."""
    now = request.app.state.clock.now()
    subscription = await service.reactivate(session, principal.organization_id, now=now)
    return _subscription_out(principal.organization_id, subscription, subscription.tier)


@router.get("/invoices", response_model=list[InvoiceOut])
async def invoices(principal: Owner, session: SessionDep) -> list[InvoiceOut]:
    """The organisation's invoices, newest first (lines in each invoice's own view)."""
    found = await InvoiceRepository(session).list_for(principal.organization_id)
    return [invoice_out(invoice) for invoice in found]


async def _invoice_view(
    database: Database, organization_id: uuid.UUID, invoice_id: uuid.UUID
) -> InvoiceOut:
    async with database.unit_of_work(primary=True) as session:
        return await _invoice_in(session, organization_id, invoice_id)


async def _invoice_in(
    session: AsyncSession, organization_id: uuid.UUID, invoice_id: uuid.UUID
) -> InvoiceOut:
    repository = InvoiceRepository(session)
    invoice = await repository.of(organization_id, invoice_id)
    if invoice is None:
        raise NotFound("No such invoice.")
    return invoice_out(
        invoice,
        await repository.lines(invoice.id),
        await PaymentRepository(session).of_invoice(invoice.id),
        await RefundRepository(session).of_invoice(invoice.id),
    )


@router.get("/invoices/{invoice_id}", response_model=InvoiceOut)
async def invoice(invoice_id: uuid.UUID, principal: Owner, session: SessionDep) -> InvoiceOut:
    return await _invoice_in(session, principal.organization_id, invoice_id)


@router.get("/invoices/{invoice_id}/html", response_class=HTMLResponse)
async def invoice_page(
    invoice_id: uuid.UUID, principal: Owner, session: SessionDep
) -> HTMLResponse:
    """The invoice as a printable page."""
    view = await _invoice_in(session, principal.organization_id, invoice_id)
    organization = await OrganizationRepository(session).get_or_raise(principal.organization_id)
    return HTMLResponse(invoice_html(view, organization.name))


async def _collect(
    request: Request, database: Database, invoice_id: uuid.UUID, organization_id: uuid.UUID
) -> None:
    state = request.app.state
    await collection.collect(
        database, _gateway(request), invoice_id, state.clock,
        organization_id=organization_id, failpoints=state.failpoints, mailer=state.mailer,
    )  # fmt: skip


@router.post("/invoices/{invoice_id}/pay", response_model=InvoiceOut)
async def pay(invoice_id: uuid.UUID, request: Request, principal: Owner) -> InvoiceOut:
    """Collect an open invoice now with the card on file. A refused card is a 402 naming
    the bank's reason (the invoice stays open); a gateway that does not answer is a 503 and
    the next try reuses the same idempotency key, so nothing is charged twice."""
    database: Database = request.app.state.database
    await _collect(request, database, invoice_id, principal.organization_id)
    view = await _invoice_view(database, principal.organization_id, invoice_id)
    last = view.payments[-1] if view.payments else None
    if view.status == "open" and last is not None and last.status != PaymentStatus.PENDING:
        raise PaymentFailed(
            "The payment did not go through"
            + (": the bank asks the cardholder to authenticate." if last.status == AUTH else "."),
            code=last.failure_code, invoice_id=str(view.id), next_attempt_at=(
                view.next_attempt_at.isoformat() if view.next_attempt_at else None
            ),
        )  # fmt: skip
    return view


@router.post("/webhooks/stripe", response_model=WebhookOut, include_in_schema=True)
async def gateway_webhook(
    request: Request,
    stripe_signature: Annotated[str | None, Header(alias="Stripe-Signature")] = None,
) -> WebhookOut:
    """The payment gateway's events, signed (`Stripe-Signature: t=..,v1=..`, 300 s either
    way). Each event is applied once, whatever the number and order of deliveries; a bad
    signature is a 400 and changes nothing."""
    state = request.app.state
    secret = state.settings.stripe_webhook_secret
    if secret is None:
        raise ServiceUnavailable(
            "Payments are not configured on this installation.", retry_after=3600
        )
    body = await request.body()
    try:
        verify_signature(body, stripe_signature or "", secret.get_secret_value(), state.clock.now())
    except BadSignature as exc:
        raise BadRequest(str(exc), field="Stripe-Signature") from None
    event = webhooks.parse_event(body)
    async with state.database.unit_of_work() as session:
        outcome = await webhooks.apply(
            session, event, tax_rate=state.settings.billing_tax_rate, now=state.clock.now(),
            mailer=state.mailer,
        )  # fmt: skip
        for invoice_id in outcome.collect:
            JobQueue.enqueue_after_commit(session.info, COLLECT_TASK, str(invoice_id))
    return WebhookOut(duplicate=outcome.duplicate)


operator_router = APIRouter(prefix="/api/v1/operator", tags=["operator"])


@operator_router.get("/revenue", response_model=RevenueOut)
async def revenue(
    request: Request,
    _: CurrentOperator,
    session: SessionDep,
    start: Annotated[UtcInstant | None, Query(description="Default: 30 days before `end`.")] = None,
    end: Annotated[UtcInstant | None, Query(description="Default: now.")] = None,
) -> RevenueOut:
    """MRR, ARR, ARPA, the MRR movements of [start, end) and trial conversion, computed from
    the subscription history (operators only; live updates: follow `operator:revenue` on
    the WebSocket)."""
    end = end or request.app.state.clock.now()
    start = start or end - timedelta(days=30)
    if start >= end:
        raise ValidationFailed(
            "The period is empty.", errors=[{"field": "start", "message": "must be before end"}]
        )
    metrics = analytics.revenue(
        await SubscriptionEventRepository(session).all_until(end), start, end
    )
    moved = metrics.movements
    net = moved.new + moved.reactivation + moved.expansion - moved.contraction - moved.churn
    return RevenueOut(
        start=start, end=end, mrr_start_usd=dollars(metrics.mrr_start_cents),
        mrr_usd=dollars(metrics.mrr_end_cents), arr_usd=dollars(metrics.arr_cents),
        paying_accounts=metrics.paying_accounts,
        arpa_usd=(metrics.arpa_cents / 100).quantize(Decimal("0.01")),
        movements=MovementsOut(
            new_usd=dollars(moved.new), reactivation_usd=dollars(moved.reactivation),
            expansion_usd=dollars(moved.expansion), contraction_usd=dollars(moved.contraction),
            churn_usd=dollars(moved.churn), net_new_usd=dollars(net), counts=moved.counts,
        ),
        trials_started=metrics.trials_started, trials_converted=metrics.trials_converted,
        trial_conversion_rate=metrics.conversion_rate,
    )  # fmt: skip


@operator_router.post("/invoices/{invoice_id}/refunds", status_code=201, response_model=RefundOut)
async def refund_invoice(
    invoice_id: uuid.UUID, body: RefundIn, request: Request, operator: CurrentOperator
) -> RefundOut:
    """Give money back on a paid invoice of any organisation (operators only): the amount,
    or what is left. Sent to the gateway with a key derived from the invoice; a request
    repeated after a timeout (503) completes the same refund, never a second one."""
    amount = None if body.amount_usd is None else to_cents(body.amount_usd)
    stored = await refunds.refund(
        request.app.state.database, _gateway(request), invoice_id, amount, body.reason,
        operator.user_id, request.app.state.clock.now(),
    )  # fmt: skip
    if stored.status == RefundStatus.FAILED:
        raise Conflict(
            f"The gateway refused the refund ({stored.failure_code or 'no reason given'}).",
            refund_id=str(stored.id),
        )
    return refund_out(stored)
