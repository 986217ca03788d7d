"""Sending alert notices: mail, signed webhooks, Slack-compatible webhooks, with retries.

A pass claims the due `AlertDelivery` rows in one short transaction (locked, skipped by
other workers, and leased: `next_attempt_at` moves past the send's time limit, so no
other worker takes them meanwhile), sends them concurrently outside any transaction, and
records each outcome in a second one: delivered, or the next attempt after a doubling
backoff, or failed after `alert_delivery_attempts`. A worker that dies after sending but
before recording sends that notice again when the lease ends: receivers deduplicate by
the `Apex-Delivery-Id` header (at-least-once, like every webhook).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import httpx
import structlog

from apex.alerts.models import (
    AlertDelivery,
    AlertEvent,
    AlertKind,
    AlertRule,
    ChannelType,
    DeliveryStatus,
    Notice,
)
from apex.alerts.repository import (
    AlertDeliveryRepository,
    AlertEventRepository,
    AlertRuleRepository,
)
from apex.kit.clock import Clock
from apex.kit.db import Database
from apex.kit.mail import Mailer
from apex.kit.sealing import Sealer
from apex.kit.signatures import signature_header
from apex.settings import Settings

BATCH = 50
MAX_BACKOFF_SECONDS = 3600
log = structlog.get_logger(__name__)


class DeliveryRefused(Exception):
    """The destination may not be called (a private address, a bad scheme)."""


@dataclass(frozen=True, slots=True)
class Notification:
    delivery_id: uuid.UUID
    channel: str
    target: str
    secret: str | None
    subject: str
    text: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Outcome:
    delivered: bool
    status_code: int | None = None
    error: str | None = None


def backoff_seconds(settings: Settings, attempts: int) -> float:
    """After the `attempts`-th failed attempt: base, 2 x base, 4 x base, ... at most 1 h."""
    exponent = min(attempts - 1, 30)
    return float(min(settings.alert_retry_base_seconds * 2**exponent, MAX_BACKOFF_SECONDS))


WHAT = {
    AlertKind.SPEND: "Spend",
    AlertKind.ERROR_RATE: "Error rate",
    AlertKind.SPEND_ANOMALY: "Spend against its usual level",
    AlertKind.QUOTA: "Monthly record quota used",
}


def _amount(rule: AlertRule, value: Decimal | None) -> str:
    if value is None:
        return "not measured (too little traffic)"
    if rule.kind == AlertKind.SPEND:
        return f"${value:,.2f}"
    if rule.kind == AlertKind.SPEND_ANOMALY:
        return f"{value:.2f}x"
    return f"{value:.2f}%"


def _scope(rule: AlertRule) -> str:
    parts = [f"workload {rule.workload}" if rule.workload else "",
             f"model {rule.model}" if rule.model else ""]  # fmt: skip
    return ", ".join(part for part in parts if part) or "all usage"


def _at(instant: datetime | None) -> str:
    return "" if instant is None else instant.strftime("%Y-%m-%d %H:%M UTC")


def describe(rule: AlertRule, event: AlertEvent, notice: str) -> tuple[str, str]:
    """The subject and text of a notice, as a person reads them."""
    what = WHAT[AlertKind(rule.kind)]
    window = (
        "this month" if rule.kind == AlertKind.QUOTA else f"the last {rule.window_minutes} minutes"
    )
    threshold = _amount(rule, event.threshold)
    if notice == Notice.FIRING:
        subject = f"[Apex] FIRING: {rule.name}"
        text = (
            f"{what} of {_scope(rule)} is {_amount(rule, event.value)} over {window}, above "
            f"the threshold of {threshold} (since {_at(event.fired_at)})."
        )
    else:
        subject = f"[Apex] RESOLVED: {rule.name}"
        text = (
            f"{what} of {_scope(rule)} is back under {threshold}: "
            f"{_amount(rule, event.resolved_value)} over {window}. It fired at "
            f"{_at(event.fired_at)} and resolved at {_at(event.resolved_at)}."
        )
    return subject, text


def payload_of(delivery: AlertDelivery, rule: AlertRule, event: AlertEvent) -> dict[str, Any]:
    """The JSON body of a webhook notice (documented in docs/alerts.md)."""

    def number(value: Decimal | None) -> str | None:
        return None if value is None else str(value)

    return {
        "id": str(delivery.id),
        "type": f"alert.{delivery.notice}",
        "organization_id": str(rule.organization_id),
        "rule": {
            "id": str(rule.id),
            "name": rule.name,
            "kind": rule.kind,
            "threshold": number(rule.threshold),
            "window_minutes": rule.window_minutes,
            "workload": rule.workload,
            "model": rule.model,
        },
        "event": {
            "id": str(event.id),
            "fired_at": event.fired_at.isoformat(),
            "resolved_at": event.resolved_at.isoformat() if event.resolved_at else None,
            "value": number(event.value),
            "resolved_value": number(event.resolved_value),
            "threshold": number(event.threshold),
        },
    }


def _forbidden_address(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return not ip.is_global or ip.is_multicast


def check_url(url: str, *, allow_private: bool) -> None:
    """What can be said without DNS: http(s), a host, and no private IP literal."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DeliveryRefused("must be an http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise DeliveryRefused("must not carry credentials")
    if allow_private:
        return
    try:
        literal = _forbidden_address(parts.hostname)
    except ValueError:  # a name, resolved when sending
        literal = parts.hostname == "localhost"
    if literal:
        raise DeliveryRefused("must not point to a loopback or private address")


async def _check_resolved(url: str, *, allow_private: bool) -> None:
    """At send time: every address the host resolves to must be public."""
    check_url(url, allow_private=allow_private)
    if allow_private:
        return
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    infos = await asyncio.get_running_loop().getaddrinfo(
        parts.hostname, port, type=socket.SOCK_STREAM
    )
    if any(_forbidden_address(str(info[4][0])) for info in infos):
        raise DeliveryRefused(f"{parts.hostname} resolves to a private address")


async def send(
    notification: Notification,
    *,
    mailer: Mailer,
    http: httpx.AsyncClient,
    settings: Settings,
    now: datetime,
) -> Outcome:
    try:
        if notification.channel == ChannelType.EMAIL:
            await asyncio.wait_for(
                mailer.send(notification.target, notification.subject, notification.text),
                settings.alert_delivery_timeout_seconds,
            )
            return Outcome(True)
        await _check_resolved(
            notification.target, allow_private=settings.alert_webhooks_allow_private
        )
        if notification.channel == ChannelType.SLACK:
            body = json.dumps({"text": f"*{notification.subject}*\n{notification.text}"}).encode()
            headers = {}
        else:
            body = json.dumps(notification.payload, separators=(",", ":")).encode()
            assert notification.secret is not None
            secret = Sealer.from_settings(settings).open(notification.secret)
            headers = {
                "Apex-Signature": signature_header(secret, int(now.timestamp()), body),
                "Apex-Delivery-Id": str(notification.delivery_id),
            }
        # Streamed and never read: only the status matters, and the receiver is the
        # customer's, so its body could be of any size.
        async with http.stream(
            "POST",
            notification.target,
            content=body,
            headers={"Content-Type": "application/json", "User-Agent": "Apex-Alerts", **headers},
        ) as response:
            status = response.status_code
    except Exception as exc:  # any failure is retried, never the end of the pass
        return Outcome(False, error=f"{type(exc).__name__}: {exc}"[:500])
    if 200 <= status < 300:
        return Outcome(True, status)
    return Outcome(False, status, f"answered {status}")


async def _claim(database: Database, now: datetime, lease: timedelta) -> list[Notification]:
    async with database.unit_of_work(primary=True) as session:
        due = await AlertDeliveryRepository(session).claim_due(now, BATCH)
        events, rules = AlertEventRepository(session), AlertRuleRepository(session)
        claimed = []
        for delivery in due:
            delivery.attempts += 1
            delivery.next_attempt_at = now + lease
            event = await events.get_or_raise(delivery.event_id)
            rule = await rules.get_or_raise(event.rule_id)
            subject, text = describe(rule, event, delivery.notice)
            claimed.append(
                Notification(
                    delivery_id=delivery.id,
                    channel=delivery.channel,
                    target=delivery.target,
                    secret=rule.webhook_secret,
                    subject=subject,
                    text=text,
                    payload=payload_of(delivery, rule, event),
                )
            )
    return claimed


async def _record(
    database: Database,
    settings: Settings,
    now: datetime,
    results: list[tuple[Notification, Outcome]],
) -> None:
    async with database.unit_of_work(primary=True) as session:
        deliveries = AlertDeliveryRepository(session)
        for notification, outcome in results:
            delivery = await deliveries.get(notification.delivery_id)
            if delivery is None:  # its rule was deleted meanwhile
                continue
            delivery.response_status = outcome.status_code
            delivery.last_error = outcome.error
            if outcome.delivered:
                delivery.status = DeliveryStatus.DELIVERED.value
                delivery.delivered_at = now
            elif delivery.attempts >= settings.alert_delivery_attempts:
                delivery.status = DeliveryStatus.FAILED.value
            else:
                wait = backoff_seconds(settings, delivery.attempts)
                delivery.next_attempt_at = now + timedelta(seconds=wait)
            log.info("alert_notice_sent" if outcome.delivered else "alert_notice_failed",
                     delivery_id=str(delivery.id), channel=delivery.channel,
                     attempt=delivery.attempts, error=outcome.error)  # fmt: skip


async def deliver_due(
    database: Database, clock: Clock, mailer: Mailer, http: httpx.AsyncClient, settings: Settings
) -> int:
    """Send every notice that is due; how many were attempted."""
    lease = timedelta(seconds=2 * settings.alert_delivery_timeout_seconds + 30)
    attempted = 0
    while True:
        claimed = await _claim(database, clock.now(), lease)
        if not claimed:
            return attempted
        outcomes = await asyncio.gather(
            *(send(n, mailer=mailer, http=http, settings=settings, now=clock.now())
              for n in claimed)
        )  # fmt: skip
        await _record(database, settings, clock.now(), list(zip(claimed, outcomes, strict=True)))
        attempted += len(claimed)
        if len(claimed) < BATCH:
            return attempted
