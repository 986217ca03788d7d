"""Billing's job: `apex.billing.collect_invoice` collects one invoice (queued when a webhook
issues one; the worker's billing cycle collects anything a lost job left open)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from apex.billing.collection import collect
from apex.billing.gateway import PaymentGateway
from apex.kit.clock import Clock
from apex.kit.db import Database
from apex.kit.failpoints import Failpoints
from apex.kit.mail import Mailer
from apex.kit.queue import JobQueue

COLLECT_TASK = "apex.billing.collect_invoice"


@dataclass(frozen=True, slots=True)
class BillingRuntime:
    database: Database
    gateway: PaymentGateway | None
    clock: Clock
    failpoints: Failpoints
    mailer: Mailer | None = None


def register_billing_tasks(queue: JobQueue, runtime: BillingRuntime | None) -> None:
    """Register the task; `runtime` is None in processes that only queue jobs."""

    async def collect_invoice(invoice_id: str) -> None:
        if runtime is None:
            raise RuntimeError("this process queues jobs but does not run them")
        if runtime.gateway is None:
            return  # no payments configured: the invoice stays open
        await collect(
            runtime.database, runtime.gateway, uuid.UUID(invoice_id), runtime.clock,
            failpoints=runtime.failpoints, mailer=runtime.mailer,
        )  # fmt: skip

    queue.register(COLLECT_TASK, collect_invoice)
