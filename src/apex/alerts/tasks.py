"""The alerting loop of `apex worker` (and of `apex serve` on the embedded default)."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta

import httpx
import structlog

from apex.alerts.delivery import deliver_due
from apex.alerts.service import evaluate_all
from apex.kit.clock import Clock
from apex.kit.db import Database
from apex.kit.mail import Mailer
from apex.settings import Settings

log = structlog.get_logger(__name__)


async def alert_pass(
    database: Database, clock: Clock, mailer: Mailer, http: httpx.AsyncClient, settings: Settings
) -> None:
    # A rule is due again after 90% of the interval: one worker's passes (an interval plus
    # the pass apart) always find it due, and with several workers the first one takes it.
    every = timedelta(seconds=settings.alert_evaluation_seconds * 0.9)
    evaluations = await evaluate_all(database, clock.now(), every)
    changed = [e for e in evaluations if e.outcome in ("fired", "resolved")]
    sent = await deliver_due(database, clock, mailer, http, settings)
    if changed or sent:
        log.info("alerts_evaluated", rules=len(evaluations), changed=len(changed), sent=sent)


async def keep_alerting(
    database: Database, clock: Clock, mailer: Mailer, settings: Settings, stop: asyncio.Event
) -> None:
    """Evaluate and deliver every `alert_evaluation_seconds` until `stop` is set; a failed
    pass is logged and the next one tries again."""
    timeout = httpx.Timeout(settings.alert_delivery_timeout_seconds)
    async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as http:
        while not stop.is_set():
            try:
                await alert_pass(database, clock, mailer, http, settings)
            except Exception:
                log.exception("alert_pass_failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), settings.alert_evaluation_seconds)
