"""Collecting invoices through the gateway, and the billing cycle the worker runs.

A collection is three steps, and never one transaction around a network call:
1. store the attempt (pending, with its idempotency key) and commit;
2. ask the gateway to charge with that key;
3. store the answer and commit.
A process killed between 2 and 3 leaves the attempt pending: the next collection of the
invoice (the cycle, a retry, the customer's "pay now") sends the same key, so the gateway
answers with the charge it made instead of making another, and the gateway's webhook about
it settles the same attempt if it arrives first.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from decimal import Decimal

import structlog

from apex.billing import mails, service
from apex.billing.gateway import Charge, PaymentGateway, metadata_for
from apex.billing.models import Payment
from apex.billing.repository import InvoiceRepository, SubscriptionRepository
from apex.findings import service as findings
from apex.findings.repository import FindingRepository
from apex.kit.clock import Clock
from apex.kit.db import Database
from apex.kit.failpoints import NO_FAILPOINTS, Failpoints
from apex.kit.mail import Mailer

log = structlog.get_logger(__name__)


async def collect(
    database: Database,
    gateway: PaymentGateway,
    invoice_id: uuid.UUID,
    clock: Clock,
    *,
    organization_id: uuid.UUID | None = None,
    failpoints: Failpoints = NO_FAILPOINTS,
    mailer: Mailer | None = None,
) -> Payment | None:
    """Try to collect the invoice once; the attempt as stored (None: nothing to collect).
    `GatewayUnavailable` leaves the attempt pending for the next try, with the same key."""
    async with database.unit_of_work() as session:
        attempt = await service.begin_attempt(session, invoice_id, organization_id)
    if attempt is None:
        return None
    if attempt.customer_id is None:
        charge = Charge(None, "failed", "no_payment_method", "No card on file.")
    else:
        charge = await gateway.charge(
            attempt.customer_id,
            attempt.amount_cents,
            attempt.currency,
            idempotency_key=attempt.idempotency_key,
            metadata=metadata_for(
                attempt.organization_id, attempt.invoice_id, attempt.idempotency_key
            ),
        )
    failpoints.kill("billing.crash_after_charge")
    async with database.unit_of_work() as session:
        payment = await service.settle(
            session, attempt.idempotency_key, charge.status,
            gateway_payment_id=charge.id, failure_code=charge.failure_code, now=clock.now(),
            mailer=mailer,
        )  # fmt: skip
    log.info("invoice_collection", invoice_id=str(invoice_id), status=charge.status,
             code=charge.failure_code)  # fmt: skip
    return payment


@dataclass(frozen=True, slots=True)
class CycleReport:
    findings_decided: int
    periods_closed: int
    collected: int


async def run_cycle(
    database: Database,
    gateway: PaymentGateway | None,
    clock: Clock,
    *,
    tax_rate: Decimal,
    failpoints: Failpoints = NO_FAILPOINTS,
    mailer: Mailer | None = None,
) -> CycleReport:
    """Decide every finding whose verification window is over, close every period that
    has ended (renewals, trial ends, scheduled changes; their savings need those verdicts),
    then collect every invoice whose attempt is due (new ones and the dunning retries)."""
    now = clock.now()
    async with database.unit_of_work() as session:
        verifying = await FindingRepository(session).due_for_verdict(now)
    for finding_id in verifying:
        async with database.unit_of_work() as session:
            await findings.decide(session, finding_id)
    closed = 0
    async with database.unit_of_work() as session:
        due = await SubscriptionRepository(session).due(now)
    for organization_id in due:
        async with database.unit_of_work() as session:
            invoice = await service.close_period(
                session, organization_id, tax_rate=tax_rate, now=now
            )
            if invoice is not None:
                await mails.invoice_issued(session, mailer, invoice)
        closed += 1
    collected = 0
    if gateway is not None:
        async with database.unit_of_work() as session:
            invoices = await InvoiceRepository(session).due_for_collection(now)
        for invoice_id in invoices:
            try:
                await collect(
                    database, gateway, invoice_id, clock, failpoints=failpoints, mailer=mailer
                )
            except Exception:  # one customer's failure must not stop the others
                log.exception("invoice_collection_failed", invoice_id=str(invoice_id))
                continue
            collected += 1
    return CycleReport(findings_decided=len(verifying), periods_closed=closed, collected=collected)


async def keep_billing(
    database: Database,
    gateway: PaymentGateway | None,
    clock: Clock,
    interval: float,
    stop: asyncio.Event,
    *,
    tax_rate: Decimal,
    mailer: Mailer | None = None,
) -> None:
    """The worker's loop: a cycle every `interval` seconds until `stop`."""
    while not stop.is_set():
        try:
            await run_cycle(database, gateway, clock, tax_rate=tax_rate, mailer=mailer)
        except Exception:
            log.exception("billing_cycle_failed")
        try:
            await asyncio.wait_for(stop.wait(), interval)
        except TimeoutError:
            continue
