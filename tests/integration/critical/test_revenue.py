"""Tier 1, revenue: plans, subscriptions, invoices and payments on real `apex serve` and
`apex worker` processes, PostgreSQL and Redis, with the production payment client (the
`stripe` SDK) talking to a local gateway that speaks Stripe's API over HTTP
(tests/harness/payments_server.py).

Amounts expected here are written out from the published plan prices (Free $0, Early $99,
Mid $499, Enterprise $2,500 a month), not read from Apex's catalogue.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import json
import random
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from email.message import Message
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.harness import ApexServer, ApexWorker, PostgresCluster, RedisServer
from tests.harness.payments import WEBHOOK_SECRET, PaymentsServer
from tests.harness.procs import wait_until
from tests.integration.conftest import SharedMail, run_apex
from tests.integration.critical.conftest import INVITATIONS, bearer, database_name, signup

pytestmark = pytest.mark.timeout(300)

BILLING = "/api/v1/billing"
WEBHOOK = f"{BILLING}/webhooks/stripe"
SUCCESS, DECLINE, NO_FUNDS, THREE_DS = (
    "4242424242424242", "4000000000000002", "4000000000009995", "4000002760003184",
)  # fmt: skip


def signature(body: bytes, secret: str = WEBHOOK_SECRET, at: float | None = None) -> str:
    """A `Stripe-Signature` header computed here, as Stripe documents it."""
    stamp = int(time.time() if at is None else at)
    mac = hmac.new(secret.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={stamp},v1={mac}"


def deliver(server: ApexServer, body: bytes, header: str | None = None) -> httpx.Response:
    headers = {"Content-Type": "application/json", "Stripe-Signature": header or signature(body)}
    return httpx.post(server.base_url + WEBHOOK, content=body, headers=headers, timeout=30)


def event_body(event: dict[str, Any]) -> bytes:
    """An event as the gateway sends it (without the double's delivery log)."""
    return json.dumps({k: v for k, v in event.items() if k != "deliveries"}).encode()


def events_of(payments: PaymentsServer, kind: str) -> list[dict[str, Any]]:
    return [event for event in payments.events() if event["type"] == kind]


def charges_of(payments: PaymentsServer, customer: str) -> list[dict[str, Any]]:
    return [c for c in payments.ledger()["charges"] if c["customer"] == customer]


def scalar(postgres: PostgresCluster, database_url: str, query: str) -> str:
    return postgres.sql(query, database_name(database_url)).strip()


def customer_of(postgres: PostgresCluster, database_url: str, organization_id: str) -> str:
    query = "SELECT gateway_customer_id FROM subscriptions WHERE organization_id = '{}'"
    return scalar(postgres, database_url, query.format(organization_id))


def test_payment_webhook_idempotency_integration(
    postgres: PostgresCluster,
    database_url: str,
    redis_server: RedisServer,
    start_apex: Callable[..., ApexServer],
    start_worker: Callable[..., ApexWorker],
    payments: PaymentsServer,
) -> None:
    """The same webhook 10 times at once: one subscription change, one invoice, one charge.
    A charge's success and failure delivered in the wrong order (and twice each): it ends
    paid. A bad signature, a tampered body, a timestamp 301 s off either way: 400, nothing
    stored."""
    server = start_apex(database_url, redis_server.url, **payments.apex_settings())
    start_worker(database_url, redis_server.url, **payments.apex_settings())  # collections
    client = server.client()
    owner = signup(client).json()
    auth, org = bearer_of(owner), owner["organization_id"]

    def count(table: str) -> int:
        where = f"organization_id = '{org}'"
        return int(scalar(postgres, database_url, f"SELECT count(*) FROM {table} WHERE {where}"))  # noqa: S608

    # The gateway delivers nothing itself here (no endpoint configured): the test does.
    checkout = client.post(f"{BILLING}/checkout", headers=auth, json={"tier": "mid"})
    assert checkout.status_code == 200, checkout.text
    assert payments.pay_checkout(checkout.json()["url"], SUCCESS).status_code == 303
    (completed,) = events_of(payments, "checkout.session.completed")
    body = event_body(completed)
    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda _: deliver(server, body), range(10)))
    assert [a.status_code for a in answers] == [200] * 10, [a.text for a in answers]
    assert sorted(a.json()["duplicate"] for a in answers) == [False] + [True] * 9
    assert count("subscription_events") == 1
    assert count("invoices") == 1
    stored = f"SELECT count(*) FROM gateway_events WHERE gateway_event_id = '{completed['id']}'"  # noqa: S608
    assert scalar(postgres, database_url, stored) == "1"
    customer = customer_of(postgres, database_url, org)
    assert wait_until(lambda: latest_invoice(client, auth)["status"] == "paid", 30)
    (charge,) = charges_of(payments, customer)  # one charge, not ten
    assert (charge["amount"], charge["status"]) == (49_900, "succeeded")
    subscription = client.get(f"{BILLING}/subscription", headers=auth).json()
    assert (subscription["tier"], subscription["status"]) == ("mid", "active")

    # 3-D Secure: the upgrade's charge is refused until the cardholder authenticates; the
    # gateway then reports success — delivered before the earlier failure, each twice.
    payments.change_card(customer, THREE_DS)
    upgrade = client.post(f"{BILLING}/subscription/change", headers=auth,
                          json={"tier": "enterprise"})  # fmt: skip
    assert upgrade.status_code == 200, upgrade.text
    proration = upgrade.json()["invoice"]
    assert (proration["status"], proration["payments"][-1]["status"]) == ("open", "requires_action")
    refused = [c for c in charges_of(payments, customer) if c["status"] != "succeeded"]
    payments.authenticate(refused[0]["id"])
    (failed,) = events_of(payments, "payment_intent.payment_failed")
    succeeded = events_of(payments, "payment_intent.succeeded")[-1]
    for event in (succeeded, failed, failed, succeeded):
        assert deliver(server, event_body(event)).status_code == 200
    invoice = client.get(f"{BILLING}/invoices/{proration['id']}", headers=auth).json()
    assert invoice["status"] == "paid", invoice
    assert [(p["attempt"], p["status"]) for p in invoice["payments"]] == [(1, "succeeded")]
    subscription = client.get(f"{BILLING}/subscription", headers=auth).json()
    assert (subscription["tier"], subscription["status"]) == ("enterprise", "active")

    # Forged, tampered, stale and early deliveries change nothing.
    before = (count("subscription_events"), count("invoices"), count("payments"),
              scalar(postgres, database_url, "SELECT count(*) FROM gateway_events"))  # fmt: skip
    forged = {**json.loads(body), "id": f"evt_{uuid.uuid4().hex}"}
    forged["data"]["object"]["metadata"]["tier"] = "early"
    forged_body = json.dumps(forged).encode()
    # Signed as each is sent (whole seconds: 301 s before the send, 301 s after it at least).
    forgeries: list[Callable[[], tuple[str, bytes]]] = [
        lambda: (signature(forged_body, secret="whsec_someone_else"), forged_body),
        lambda: (signature(forged_body), forged_body.replace(b'"early"', b'"enterprise"')),
        lambda: (signature(forged_body, at=int(time.time()) - 301), forged_body),
        lambda: (signature(forged_body, at=int(time.time()) + 302), forged_body),
        lambda: ("t=garbage", forged_body),
    ]
    for forge in forgeries:
        header, sent = forge()
        refused_answer = deliver(server, sent, header)
        assert refused_answer.status_code == 400, refused_answer.text
        assert refused_answer.json()["field"] == "Stripe-Signature"
    unsigned = httpx.post(server.base_url + WEBHOOK, content=forged_body, timeout=10,
                          headers={"Content-Type": "application/json"})  # fmt: skip
    assert unsigned.status_code == 400, unsigned.text
    after = (count("subscription_events"), count("invoices"), count("payments"),
             scalar(postgres, database_url, "SELECT count(*) FROM gateway_events"))  # fmt: skip
    assert after == before
    # Within the tolerance (298 s old when sent) an event is accepted.
    harmless_event = json.dumps(
        {
            "id": f"evt_{uuid.uuid4().hex}",
            "type": "customer.updated",
            "created": int(time.time()),
            "data": {"object": {"id": customer}},
        }
    )
    harmless = harmless_event.encode()
    assert deliver(server, harmless, signature(harmless, at=time.time() - 298)).status_code == 200
    client.close()


def mail_text(mail: Message) -> str:
    body = mail.get_payload(decode=True)
    return body.decode() if isinstance(body, bytes) else str(mail.get_payload())


def latest_invoice(client: httpx.Client, auth: dict[str, str]) -> dict[str, Any]:
    invoices: list[dict[str, Any]] = client.get(f"{BILLING}/invoices", headers=auth).json()
    return invoices[0]


def bearer_of(account: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {account['access_token']}"}


def test_free_to_paid_conversion_integration(
    postgres: PostgresCluster,
    database_url: str,
    redis_server: RedisServer,
    start_apex: Callable[..., ApexServer],
    start_worker: Callable[..., ApexWorker],
    payments: PaymentsServer,
) -> None:
    """A Free organisation meets its limits (one seat; 100 API requests an hour: a 429
    naming the Early plan and where to buy it), buys Early through the gateway's page, and
    the webhook makes it Early on both instances at once: more requests, more seats; the
    first invoice ($99.00) is paid exactly once."""
    settings = {"enforce_api_limits": "true", **payments.apex_settings()}
    a = start_apex(database_url, redis_server.url, **settings)
    b = start_apex(database_url, redis_server.url, **settings)
    start_worker(database_url, redis_server.url, **payments.apex_settings())
    payments.send_webhooks_to(a.base_url + WEBHOOK)
    ca, cb = a.client(), b.client()
    owner = signup(ca)
    auth, org = bearer(owner), owner.json()["organization_id"]

    seat = cb.post(INVITATIONS, headers=auth, json={"email": "first@example.test"})
    assert seat.status_code == 429, seat.text
    assert (seat.json()["upgrade"], seat.json()["checkout"]) == ("early", f"{BILLING}/checkout")
    served = 1  # the invitation

    def read_organization() -> httpx.Response:
        return (ca, cb)[served % 2].get("/api/v1/organizations/current", headers=auth)

    while (answer := read_organization()).status_code == 200:
        served += 1
        assert served <= 100, "the Free plan allows 100 API requests an hour"
    assert served == 100, served
    assert answer.status_code == 429
    assert (answer.json()["upgrade"], answer.json()["checkout"]) == ("early", f"{BILLING}/checkout")
    assert int(answer.headers["Retry-After"]) > 0

    # At the limit, buying is still possible.
    mail = SharedMail.get()
    before = mail.keys()
    checkout = cb.post(f"{BILLING}/checkout", headers=auth, json={"tier": "early"})
    assert checkout.status_code == 200, checkout.text
    assert checkout.json()["url"].startswith(payments.url)
    assert payments.pay_checkout(checkout.json()["url"], SUCCESS).status_code == 303

    def on_early() -> bool:
        subscription: dict[str, Any] = cb.get(f"{BILLING}/subscription", headers=auth).json()
        return bool(subscription["tier"] == "early")

    assert wait_until(on_early, 30)
    for client in (ca, cb):  # the limit and the seats follow the plan on every instance
        current = client.get("/api/v1/organizations/current", headers=auth)
        assert current.status_code == 200, current.text
        assert current.json()["tier"] == "early"
        invited = client.post(INVITATIONS, headers=auth,
                              json={"email": f"{uuid.uuid4().hex[:8]}@example.test"})  # fmt: skip
        assert invited.status_code == 201, invited.text

    def first_invoice() -> dict[str, Any]:
        invoices = ca.get(f"{BILLING}/invoices", headers=auth).json()
        assert len(invoices) == 1, invoices
        found: dict[str, Any] = invoices[0]
        return found

    assert wait_until(lambda: first_invoice()["status"] == "paid", 30)
    assert (first_invoice()["total_usd"], first_invoice()["reason"]) == (
        "99.00",
        "subscription_create",
    )
    customer = customer_of(postgres, database_url, org)
    assert [(c["amount"], c["status"]) for c in charges_of(payments, customer)] == [
        (9_900, "succeeded")
    ]
    history = ca.get(f"{BILLING}/subscription/events", headers=auth).json()
    assert [(e["kind"], e["from_tier"], e["to_tier"], e["mrr_after_usd"]) for e in history] == [
        ("subscribed", "free", "early", "99.00")
    ]
    owner_email = ca.get("/api/v1/users/me", headers=auth).json()["email"]
    receipt = mail.next_mail(owner_email, seen=before, subject="Receipt for Apex invoice 1")
    assert "invoice 1 of $99.00" in mail_text(receipt)
    ca.close()
    cb.close()


def billing_cycle(
    database_url: str, redis_url: str, at: datetime, **settings: str
) -> subprocess.CompletedProcess[str]:
    """`apex billing cycle --at AT`, a real process, as the operator (or the worker) runs it,
    mailing the session's SMTP server."""
    settings = {"smtp_url": SharedMail.get().url, **settings}
    return run_apex(
        database_url, "billing", "cycle", "--at", at.isoformat(), redis_url=redis_url, **settings
    )


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_payment_processing_flow_integration(
    postgres: PostgresCluster,
    database_url: str,
    redis_server: RedisServer,
    start_apex: Callable[..., ApexServer],
    payments: PaymentsServer,
) -> None:
    """One invoice through a decline, insufficient funds and 3-D Secure, then paid; an
    answer lost after the gateway charged (timeout), then the retry: one charge. Then the
    process collecting renewals is killed -9 between the gateway's charge and its commit, 20
    times: every renewal is charged exactly once and Apex's ledger equals the gateway's."""
    gateway = {**payments.apex_settings(), "stripe_timeout_seconds": "1",
               "stripe_network_retries": "0"}  # fmt: skip
    server = start_apex(database_url, redis_server.url, **gateway)  # no worker: the test collects
    payments.send_webhooks_to(server.base_url + WEBHOOK)
    client = server.client(timeout=30)
    owner = signup(client)
    auth, org = bearer(owner), owner.json()["organization_id"]
    checkout = client.post(f"{BILLING}/checkout", headers=auth, json={"tier": "mid"})
    assert payments.pay_checkout(checkout.json()["url"], DECLINE).status_code == 303
    assert wait_until(lambda: client.get(f"{BILLING}/invoices", headers=auth).json() != [], 30)
    invoice_id = latest_invoice(client, auth)["id"]
    customer = customer_of(postgres, database_url, org)

    mail = SharedMail.get()
    before = mail.keys()
    outcomes = []
    for card in (DECLINE, NO_FUNDS, THREE_DS, SUCCESS):
        payments.change_card(customer, card)
        paid = client.post(f"{BILLING}/invoices/{invoice_id}/pay", headers=auth)
        outcomes.append((paid.status_code, paid.json().get("code"), paid.json().get("status")))
        if card != SUCCESS:
            assert (
                client.get(f"{BILLING}/subscription", headers=auth).json()["status"] == "past_due"
            )
    assert outcomes == [
        (402, "generic_decline", None),
        (402, "insufficient_funds", None),
        (402, "authentication_required", None),
        (200, None, "paid"),
    ]
    owner_email = client.get("/api/v1/users/me", headers=auth).json()["email"]

    # One "Payment refused" mail per refusal; mails are sent after commit, so in any order.
    def refusal_mails() -> list[str]:
        return [mail_text(m) for _, m in mail.mails_since(before)
                if m["To"] == owner_email and "Payment refused" in str(m["Subject"])]  # fmt: skip

    assert wait_until(lambda: len(refusal_mails()) >= 2, 30), refusal_mails()
    texts = refusal_mails()
    for code in ("generic_decline", "insufficient_funds"):
        assert any(f"({code}). We will try again on" in text for text in texts), (code, texts)
    invoice = client.get(f"{BILLING}/invoices/{invoice_id}", headers=auth).json()
    assert [(p["attempt"], p["status"]) for p in invoice["payments"]] == [
        (1, "failed"), (2, "failed"), (3, "requires_action"), (4, "succeeded"),
    ]  # fmt: skip
    assert client.get(f"{BILLING}/subscription", headers=auth).json()["status"] == "active"
    charged = [c for c in charges_of(payments, customer) if c["status"] == "succeeded"]
    assert [c["amount"] for c in charged] == [49_900]

    # The gateway charges, then answers after Apex gave up (1 s): the upgrade is made, its
    # charge pending; paying again sends the same key and the gateway replays its charge.
    # Its webhooks are held back from here on, so only the retry can settle a charge.
    payments.send_webhooks_to(None)
    payments.script(delay_after_charge=3)
    upgraded = client.post(
        f"{BILLING}/subscription/change", headers=auth, json={"tier": "enterprise"}
    )
    assert upgraded.status_code == 200, upgraded.text
    proration = upgraded.json()["invoice"]
    assert (proration["status"], proration["payments"][-1]["status"]) == ("open", "pending")
    retried = client.post(f"{BILLING}/invoices/{proration['id']}/pay", headers=auth)
    assert retried.status_code == 200, retried.text
    assert [(p["attempt"], p["status"]) for p in retried.json()["payments"]] == [(1, "succeeded")]
    proration_charges = [c for c in charges_of(payments, customer)
                         if c["metadata"]["invoice_id"] == proration["id"]]  # fmt: skip
    assert len(proration_charges) == 1
    assert proration_charges[0]["amount"] == round(Decimal(proration["total_usd"]) * 100)

    # Renewals collected by a process killed -9 after the gateway charged, before it stored
    # the outcome.
    crash = {**payments.apex_settings(), "failpoints": "billing.crash_after_charge:1"}
    for _ in range(20):
        period_end = parse_time(
            client.get(f"{BILLING}/subscription", headers=auth).json()["period_end"]
        )
        at = period_end + timedelta(minutes=1)
        killed = billing_cycle(database_url, redis_server.url, at, **crash)
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
        # Charged at the gateway, unknown to Apex: the attempt is still pending. The owner's
        # "pay now" on the server finds it and sends its key again.
        renewal = latest_invoice(client, auth)["id"]
        pending = client.get(f"{BILLING}/invoices/{renewal}", headers=auth).json()
        assert (pending["status"], [p["status"] for p in pending["payments"]]) == (
            "open", ["pending"])  # fmt: skip
        settled = client.post(f"{BILLING}/invoices/{renewal}/pay", headers=auth)
        assert settled.status_code == 200, settled.text
        assert [(p["attempt"], p["status"]) for p in settled.json()["payments"]] == [
            (1, "succeeded")
        ]
    invoices = client.get(f"{BILLING}/invoices", headers=auth).json()
    renewals = [i for i in invoices if i["reason"] == "subscription_cycle"]
    assert len(renewals) == 20
    assert all((i["status"], i["total_usd"]) == ("paid", "2500.00") for i in renewals)
    gateway_ledger = {(c["id"], c["amount"]) for c in charges_of(payments, customer)
                      if c["status"] == "succeeded"}  # fmt: skip
    ledger_query = (
        "SELECT gateway_payment_id || '|' || amount_cents FROM payments "
        "WHERE organization_id = '{}' AND status = 'succeeded'"
    )
    apex_ledger = postgres.sql(ledger_query.format(org), database_name(database_url)).split()
    assert {
        (pid, int(cents)) for pid, cents in (row.split("|") for row in apex_ledger)
    } == gateway_ledger
    assert len(gateway_ledger) == 1 + 1 + 20  # first invoice, proration, renewals: no double
    client.close()


def half_up(value: Decimal) -> int:
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def test_tier_transition_workflow_integration(
    postgres: PostgresCluster,
    database_url: str,
    redis_server: RedisServer,
    start_apex: Callable[..., ApexServer],
    payments: PaymentsServer,
) -> None:
    """Mid → Enterprise mid-period: the proration is exact to the cent and the run limit is
    lifted at once on the other instance. Enterprise → Early: scheduled, Enterprise's limits
    until the period ends, Early's after it, every run kept. Then a renewal the card
    refuses: past due, retried after 1, 3 and 5 days, then back on Free."""
    a = start_apex(database_url, redis_server.url, **payments.apex_settings())
    b = start_apex(database_url, redis_server.url, **payments.apex_settings())
    payments.send_webhooks_to(a.base_url + WEBHOOK)  # no worker: runs stay queued, holding slots
    ca, cb = a.client(timeout=30), b.client(timeout=30)
    owner = signup(ca)
    auth, org = bearer(owner), owner.json()["organization_id"]
    checkout = ca.post(f"{BILLING}/checkout", headers=auth, json={"tier": "mid"})
    assert payments.pay_checkout(checkout.json()["url"], SUCCESS).status_code == 303
    assert wait_until(lambda: ca.get(f"{BILLING}/invoices", headers=auth).json() != [], 30)
    first = latest_invoice(ca, auth)
    assert ca.post(f"{BILLING}/invoices/{first['id']}/pay", headers=auth).status_code == 200
    customer = customer_of(postgres, database_url, org)

    def start_run(client: httpx.Client) -> httpx.Response:
        return client.post("/api/v1/agents/runs", headers=auth, json={"question": "Where?"})

    assert [start_run(ca).status_code for _ in range(5)] == [202] * 5  # Mid: 5 at a time
    refused = start_run(cb)
    assert (refused.status_code, refused.json()["upgrade"]) == (429, "enterprise")

    subscription = cb.get(f"{BILLING}/subscription", headers=auth).json()
    start, end = parse_time(subscription["period_start"]), parse_time(subscription["period_end"])
    upgraded = cb.post(f"{BILLING}/subscription/change", headers=auth, json={"tier": "enterprise"})
    assert upgraded.status_code == 200, upgraded.text
    proration = upgraded.json()["invoice"]
    moment = parse_time(proration["issued_at"])
    left = Decimal(int((end - moment).total_seconds())) / Decimal(
        int((end - start).total_seconds())
    )
    credit, charge = -half_up(49_900 * left), half_up(250_000 * left)  # cents, each line rounded
    assert [Decimal(line["amount_usd"]) * 100 for line in proration["lines"]] == [credit, charge]
    assert Decimal(proration["total_usd"]) * 100 == credit + charge
    assert proration["status"] == "paid", proration
    assert charges_of(payments, customer)[-1]["amount"] == credit + charge
    assert start_run(ca).status_code == 202  # the sixth, at once, on the other instance

    downgrade = ca.post(f"{BILLING}/subscription/change", headers=auth, json={"tier": "early"})
    assert downgrade.status_code == 200, downgrade.text
    scheduled = downgrade.json()
    assert (scheduled["subscription"]["tier"], scheduled["subscription"]["scheduled_tier"],
            scheduled["invoice"]) == ("enterprise", "early", None)  # fmt: skip
    assert start_run(cb).status_code == 202  # still Enterprise until the period ends: 7 runs

    cycled = billing_cycle(
        database_url, redis_server.url, end + timedelta(minutes=1), **payments.apex_settings()
    )
    assert cycled.returncode == 0, cycled.stderr[-2000:]
    for client in (ca, cb):
        assert client.get("/api/v1/organizations/current", headers=auth).json()["tier"] == "early"
        assert start_run(client).status_code == 429  # Early: 2 at a time, 7 are queued
    runs = ca.get("/api/v1/agents/runs", headers=auth).json()
    assert len(runs) == 7  # data kept
    renewal = latest_invoice(ca, auth)
    assert (renewal["reason"], renewal["total_usd"], renewal["status"]) == (
        "subscription_cycle",
        "99.00",
        "paid",
    )

    # The next renewal: the card is refused, then retried on the dunning schedule. The
    # cycles run weeks ahead of the servers' clocks, so the gateway's webhooks (which the
    # servers would date today) are held back: the cycles' own answers settle each attempt.
    payments.send_webhooks_to(None)
    payments.change_card(customer, DECLINE)
    period_end = parse_time(ca.get(f"{BILLING}/subscription", headers=auth).json()["period_end"])
    at = period_end + timedelta(minutes=1)
    seen: list[object] = []
    for _ in range(4):
        cycled = billing_cycle(database_url, redis_server.url, at, **payments.apex_settings())
        assert cycled.returncode == 0, cycled.stderr[-2000:]
        dunned = latest_invoice(ca, auth)
        state = ca.get(f"{BILLING}/subscription", headers=auth).json()["status"]
        seen.append((dunned["status"], state))
        if dunned["next_attempt_at"]:
            retry = parse_time(dunned["next_attempt_at"])
            seen.append(round((retry - at).total_seconds() / 86_400))
            at = retry + timedelta(minutes=1)
    assert seen == [
        ("open", "past_due"), 1, ("open", "past_due"), 3, ("open", "past_due"), 5,
        ("uncollectible", "canceled"),
    ]  # fmt: skip
    for client in (ca, cb):
        assert client.get("/api/v1/organizations/current", headers=auth).json()["tier"] == "free"
    history = ca.get(f"{BILLING}/subscription/events", headers=auth).json()
    assert [(e["kind"], e["from_tier"], e["to_tier"], e["mrr_after_usd"]) for e in history] == [
        ("subscribed", "free", "mid", "499.00"),
        ("upgraded", "mid", "enterprise", "2500.00"),
        ("downgrade_scheduled", "enterprise", "enterprise", "2500.00"),
        ("downgraded", "enterprise", "early", "99.00"),
        ("renewed", "early", "early", "99.00"),
        ("past_due", "early", "early", "99.00"),
        ("canceled", "early", "early", "0.00"),
    ]
    assert len(ca.get("/api/v1/agents/runs", headers=auth).json()) == 7  # still all there
    ca.close()
    cb.close()


class RevenueWatcher(threading.Thread):
    """An operator's WebSocket connection following the revenue feed, in its own thread."""

    def __init__(self, server: ApexServer, token: str) -> None:
        super().__init__(daemon=True)
        self.url = server.base_url.replace("http://", "ws://") + "/ws"
        self.token = token
        self.frames: list[dict[str, Any]] = []
        self.answers: list[dict[str, Any]] = []
        self.ready = threading.Event()
        self.done = threading.Event()

    def run(self) -> None:
        asyncio.run(self.watch())

    async def watch(self) -> None:
        async with connect(self.url) as ws:
            await ws.send(json.dumps({"type": "auth", "token": self.token}))
            await ws.send(json.dumps({"type": "resume", "payload": {
                "channels": {"operator:revenue": {"seq": 0}}}}))  # fmt: skip
            while not self.done.is_set():
                try:
                    frame = json.loads(await asyncio.wait_for(ws.recv(), 0.2))
                except TimeoutError:
                    continue
                if frame["type"] == "revenue_event":
                    self.frames.append(frame)
                else:
                    self.answers.append(frame)
                    if frame["type"] in ("resumed", "error"):
                        self.ready.set()


def test_revenue_analytics_integration(
    postgres: PostgresCluster,
    database_url: str,
    fresh_redis: RedisServer,
    start_apex: Callable[..., ApexServer],
    start_worker: Callable[..., ApexWorker],
    payments: PaymentsServer,
) -> None:
    """Three of each kind of customer (grows, shrinks, churns, converts a trial, lets a
    trial lapse, cancels then stays, recovers from a refused card): 66 subscription events
    across two billing cycles. MRR, ARR, ARPA, every movement and the trial conversion equal
    figures worked out here from the plan prices; an operator's WebSocket receives every
    event live, in order; a customer cannot read or follow any of it."""
    # A Redis of its own: the operators' channel belongs to the installation, and events of
    # other tests sharing a Redis would be on it too.
    operator_email = f"operator-{uuid.uuid4().hex[:8]}@example.test"
    settings = {**payments.apex_settings(), "operator_emails": operator_email}
    server = start_apex(database_url, fresh_redis.url, **settings)
    start_worker(database_url, fresh_redis.url, **payments.apex_settings())
    payments.send_webhooks_to(server.base_url + WEBHOOK)
    client = server.client(timeout=30)
    operator = signup(client, email=operator_email)
    watcher = RevenueWatcher(server, operator.json()["access_token"])
    watcher.start()
    assert watcher.ready.wait(10)
    assert [a["type"] for a in watcher.answers] == ["connection_established", "resumed"]
    started = datetime.now(UTC) - timedelta(minutes=5)

    organization_of: dict[str, str] = {}  # an owner's Authorization header → organisation

    def customer(tier: str | None, card: str = SUCCESS, trial: bool = False) -> dict[str, str]:
        account = signup(client)
        auth = bearer(account)
        organization_of[auth["Authorization"]] = account.json()["organization_id"]
        if trial:
            assert client.post(f"{BILLING}/trial", headers=auth).status_code == 201
        if tier:
            checkout = client.post(f"{BILLING}/checkout", headers=auth, json={"tier": tier})
            assert payments.pay_checkout(checkout.json()["url"], card).status_code == 303
            assert wait_until(
                lambda: client.get(f"{BILLING}/invoices", headers=auth).json() != [], 30
            )
        return auth

    def paid(auth: dict[str, str]) -> bool:
        return bool(latest_invoice(client, auth)["status"] == "paid")

    def status_is(auth: dict[str, str], status: str) -> bool:
        return bool(client.get(f"{BILLING}/subscription", headers=auth).json()["status"] == status)

    def revenue_report(start: datetime, end: datetime) -> dict[str, Any]:
        period = {"start": start.isoformat(), "end": end.isoformat()}
        found = client.get("/api/v1/operator/revenue", headers=bearer(operator), params=period)
        assert found.status_code == 200, found.text
        report: dict[str, Any] = found.json()
        return report

    for _ in range(3):
        grows = customer("early")
        assert client.post(f"{BILLING}/subscription/change", headers=grows,
                           json={"tier": "mid"}).status_code == 200  # fmt: skip
        shrinks = customer("enterprise")
        assert client.post(f"{BILLING}/subscription/change", headers=shrinks,
                           json={"tier": "early"}).status_code == 200  # fmt: skip
        churns = customer("mid")
        assert client.post(f"{BILLING}/subscription/cancel", headers=churns).status_code == 200
        converts = customer(None, trial=True)
        checkout = client.post(f"{BILLING}/checkout", headers=converts, json={"tier": "early"})
        assert payments.pay_checkout(checkout.json()["url"], SUCCESS).status_code == 303
        customer(None, trial=True)  # lapses
        wavers = customer("early")
        assert client.post(f"{BILLING}/subscription/cancel", headers=wavers).status_code == 200
        assert client.post(f"{BILLING}/subscription/reactivate", headers=wavers).status_code == 200
        recovers = customer("mid", card=DECLINE)
        assert wait_until(functools.partial(status_is, recovers, "past_due"), 30)
        for auth in (grows, shrinks, churns, converts, wavers):
            assert wait_until(functools.partial(paid, auth), 30)
        # The customer puts a working card on the gateway's page, then pays.
        card_holder = customer_of(
            postgres, database_url, organization_of[recovers["Authorization"]]
        )
        payments.change_card(card_holder, SUCCESS)
        refused_invoice = latest_invoice(client, recovers)["id"]
        retried = client.post(f"{BILLING}/invoices/{refused_invoice}/pay", headers=recovers)
        assert retried.status_code == 200, retried.text

    mid_point = datetime.now(UTC) + timedelta(minutes=5)
    # Trials end after 14 days; every paid period after a month.
    for days in (15, 32):
        cycled = billing_cycle(database_url, fresh_redis.url, started + timedelta(days=days),
                               **payments.apex_settings())  # fmt: skip
        assert cycled.returncode == 0, cycled.stderr[-2000:]
    end = started + timedelta(days=33)

    # Worked out from the prices: per set of seven customers, at the end Mid (grows) +
    # Early (shrinks) + Early (converts) + Early (wavers) + Mid (recovers) = $1,295.
    report = revenue_report(started, end)
    moves = report["movements"]
    assert (report["mrr_start_usd"], report["mrr_usd"], report["arr_usd"]) == (
        "0.00", "3885.00", "46620.00")  # fmt: skip
    assert (report["paying_accounts"], report["arpa_usd"]) == (15, "259.00")
    assert (moves["new_usd"], moves["expansion_usd"], moves["contraction_usd"],
            moves["churn_usd"], moves["reactivation_usd"], moves["net_new_usd"]) == (
        "11385.00", "1200.00", "7203.00", "1497.00", "0.00", "3885.00")  # fmt: skip
    assert moves["counts"] == {"new": 18, "expansion": 3, "contraction": 3, "churn": 3}
    assert (report["trials_started"], report["trials_converted"],
            report["trial_conversion_rate"]) == (6, 3, "0.5")  # fmt: skip
    # Before the cycles: grows $499 + shrinks $2,500 + churns $499 + converts $99 + wavers
    # $99 + recovers $499 = $4,195 a set.
    assert revenue_report(started, mid_point)["mrr_usd"] == "12585.00"

    # 22 events a set, every one pushed to the operator, in order, exactly once.
    assert wait_until(lambda: len(watcher.frames) >= 66, 30), len(watcher.frames)
    time.sleep(0.5)
    watcher.done.set()
    watcher.join(5)
    assert [f["seq"] for f in watcher.frames] == list(range(1, 67))
    kinds = Counter(f["payload"]["kind"] for f in watcher.frames)
    assert kinds == {
        "subscribed": 18, "upgraded": 3, "downgrade_scheduled": 3, "downgraded": 3,
        "cancel_scheduled": 6, "canceled": 6, "reactivated": 3, "trial_started": 6,
        "past_due": 3, "recovered": 3, "renewed": 12,
    }  # fmt: skip

    # A customer's owner can neither read nor follow any of it.
    someone = signup(client)
    refused = client.get("/api/v1/operator/revenue", headers=bearer(someone))
    assert refused.status_code == 403
    outsider = RevenueWatcher(server, someone.json()["access_token"])
    outsider.start()
    assert outsider.ready.wait(10)
    outsider.done.set()
    outsider.join(5)
    assert [(a["type"], a["payload"]["field"]) for a in outsider.answers[1:]] == [
        ("error", "channels")
    ]
    assert outsider.frames == []
    client.close()


EARLY_PER_MILLION = Decimal("0.50")  # the Early plan's price of a million analysed tokens


def record(tokens: int, at: datetime, record_id: str | None = None) -> dict[str, Any]:
    """A usage record of `tokens` analysed tokens (input and output)."""
    return {"id": record_id or uuid.uuid4().hex, "timestamp": at.isoformat(),
            "provider": "openai", "model": "gpt-4o-mini",
            "input_tokens": tokens - tokens // 3, "output_tokens": tokens // 3}  # fmt: skip


def test_usage_billing_accuracy_integration(
    postgres: PostgresCluster,
    database_url: str,
    redis_server: RedisServer,
    start_apex: Callable[..., ApexServer],
    start_worker: Callable[..., ApexWorker],
    payments: PaymentsServer,
) -> None:
    """100 records of 100,000 tokens on Early ($0.50 a million): $0.05 each, exactly $5.00
    on the renewal. 10,000 records of random sizes sent to 3 instances at once, with
    retried batches and duplicates: the renewal bills their sum to the cent. A record of a
    period already invoiced: an adjustment on the next invoice, not lost."""
    servers = [start_apex(database_url, redis_server.url, **payments.apex_settings())
               for _ in range(3)]  # fmt: skip
    start_worker(database_url, redis_server.url, **payments.apex_settings())
    payments.send_webhooks_to(servers[0].base_url + WEBHOOK)
    clients = [server.client(timeout=60) for server in servers]
    client = clients[0]

    def subscribed() -> dict[str, str]:
        auth = bearer(signup(client))
        checkout = client.post(f"{BILLING}/checkout", headers=auth, json={"tier": "early"})
        assert payments.pay_checkout(checkout.json()["url"], SUCCESS).status_code == 303
        assert wait_until(lambda: client.get(f"{BILLING}/invoices", headers=auth).json() != [], 30)
        return auth

    small, large = subscribed(), subscribed()
    time.sleep(1)  # every record below is after both subscriptions began
    now = datetime.now(UTC)
    sent = client.post("/api/v1/usage/events", headers=small,
                       json={"records": [record(100_000, now) for _ in range(100)]})  # fmt: skip
    assert sent.json()["accepted"] == 100, sent.text

    rng = random.Random(20261126)
    sizes = [rng.randint(1, 250_000) for _ in range(10_000)]
    # A total 3/4 of the way between two cents (a cent is 20,000 tokens): rounding shows.
    sizes[-1] += (15_000 - sum(sizes) % 20_000) % 20_000
    records = [record(size, now) for size in sizes]
    batches = [records[i : i + 500] for i in range(0, len(records), 500)]
    retried = [rng.choice(batches) for _ in range(4)]  # sent again, whole, to another instance
    repeats = [rng.sample(records, 300)]  # single records sent again inside a batch
    sends = [(n % 3, batch) for n, batch in enumerate(batches + retried + repeats)]
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda s: clients[s[0]].post(
            "/api/v1/usage/events", headers=large, json={"records": s[1]}), sends))  # fmt: skip
    assert all(a.status_code == 200 for a in answers), [
        a.text for a in answers if a.status_code != 200
    ]
    assert sum(a.json()["accepted"] for a in answers) == 10_000
    tokens = sum(r["input_tokens"] + r["output_tokens"] for r in records)

    def usage_lines(auth: dict[str, str]) -> list[dict[str, Any]]:
        invoice = latest_invoice(client, auth)
        detail = client.get(f"{BILLING}/invoices/{invoice['id']}", headers=auth).json()
        return [line for line in detail["lines"] if line["kind"].startswith("usage")]

    period_end = parse_time(
        client.get(f"{BILLING}/subscription", headers=large).json()["period_end"]
    )
    cycled = billing_cycle(database_url, redis_server.url, period_end + timedelta(minutes=5),
                           **payments.apex_settings())  # fmt: skip
    assert cycled.returncode == 0, cycled.stderr[-2000:]
    (five,) = usage_lines(small)
    assert (five["quantity"], five["amount_usd"]) == (10_000_000, "5.00")
    (metered,) = usage_lines(large)
    expected = half_up(Decimal(tokens) * EARLY_PER_MILLION * 100 / 1_000_000)
    assert (metered["quantity"], int(Decimal(metered["amount_usd"]) * 100)) == (tokens, expected)
    total = Decimal(latest_invoice(client, large)["total_usd"])
    assert total * 100 == 9_900 + expected  # the base fee and the usage, nothing else

    # A record of the invoiced period arrives late: billed on the next invoice.
    late = client.post("/api/v1/usage/events", headers=large,
                       json={"records": [record(123_457, datetime.now(UTC))]})  # fmt: skip
    assert late.json()["accepted"] == 1, late.text
    next_end = parse_time(client.get(f"{BILLING}/subscription", headers=large).json()["period_end"])
    cycled = billing_cycle(database_url, redis_server.url, next_end + timedelta(minutes=5),
                           **payments.apex_settings())  # fmt: skip
    assert cycled.returncode == 0, cycled.stderr[-2000:]
    (adjustment,) = usage_lines(large)
    owed = half_up(Decimal(tokens + 123_457) * EARLY_PER_MILLION * 100 / 1_000_000) - expected
    assert (adjustment["kind"], adjustment["quantity"]) == ("usage_adjustment", 123_457)
    assert Decimal(adjustment["amount_usd"]) * 100 == owed
    assert usage_lines(small) == []  # nothing new for the other organisation
    for each in clients:
        each.close()


FINDINGS = "/api/v1/findings"
RUNS = "/api/v1/agents/runs"
# Published prices, $ a million tokens (input, output): gpt-4o 2.50 / 10.00, gpt-4.1-nano
# 0.10 / 0.40. Each call below reports its cost, computed here from them.
PRICES = {"gpt-4o": (Decimal("2.50"), Decimal("10.00")),
          "gpt-4.1-nano": (Decimal("0.10"), Decimal("0.40"))}  # fmt: skip
EARLY_SAVINGS_SHARE = Decimal("0.15")


def priced_call(
    workload: str, model: str, at: datetime, input_tokens: int, output_tokens: int,
    status: str = "ok",
) -> dict[str, Any]:  # fmt: skip
    price_in, price_out = PRICES[model]
    cost = (input_tokens * price_in + output_tokens * price_out) / 1_000_000
    return {"id": uuid.uuid4().hex, "timestamp": at.isoformat(), "provider": "openai",
            "model": model, "workload": workload, "input_tokens": input_tokens,
            "output_tokens": output_tokens, "status": status, "cost_usd": str(cost)}  # fmt: skip


def spread(start: datetime, end: datetime, count: int) -> list[datetime]:
    step = (end - start) / count
    return [start + step * i for i in range(count)]


def test_verified_savings_billing_integration(
    postgres: PostgresCluster,
    database_url: str,
    redis_server: RedisServer,
    start_apex: Callable[..., ApexServer],
    start_worker: Callable[..., ApexWorker],
    payments: PaymentsServer,
) -> None:
    """A run's findings are kept; three are adopted. Over the week after adoption one
    workload's cost per call falls (verified), one does not move (not realised: no
    saving), one falls but fails more (not realised: quality). The renewal bills Early's
    15 % of the saving measured after verification, computed here from the calls sent, and
    nothing for the other two."""
    server = start_apex(database_url, redis_server.url, **payments.apex_settings())
    start_worker(database_url, redis_server.url, **payments.apex_settings())
    payments.send_webhooks_to(server.base_url + WEBHOOK)
    client = server.client(timeout=60)
    auth = bearer(signup(client))
    checkout = client.post(f"{BILLING}/checkout", headers=auth, json={"tier": "early"})
    assert payments.pay_checkout(checkout.json()["url"], SUCCESS).status_code == 303
    assert wait_until(lambda: client.get(f"{BILLING}/invoices", headers=auth).json() != [], 30)

    def send(records: list[dict[str, Any]]) -> None:
        for i in range(0, len(records), 1000):
            batch = records[i : i + 1000]
            answer = client.post("/api/v1/usage/events", headers=auth, json={"records": batch})
            assert answer.status_code == 200, answer.text
            assert answer.json()["accepted"] == len(batch), answer.text

    # Ten days before adoption: four workloads of short calls on gpt-4o.
    now = datetime.now(UTC)
    before = spread(now - timedelta(days=10), now - timedelta(hours=2), 200)
    shapes = {"triage": (1500, 40), "tagger": (400, 10), "classifier": (300, 15),
              "legacy": (600, 30)}  # fmt: skip
    send([priced_call(w, "gpt-4o", at, *shape) for w, shape in shapes.items() for at in before])
    run = client.post(RUNS, headers=auth, json={
        "question": "Where are we wasting money on LLMs?",
        "period_start": (now - timedelta(days=11)).isoformat(), "period_end": now.isoformat(),
    })  # fmt: skip
    assert run.status_code == 202, run.text
    run_url = f"{RUNS}/{run.json()['id']}"
    assert wait_until(
        lambda: client.get(run_url, headers=auth).json()["status"] == "succeeded", 120
    ), client.get(run_url, headers=auth).json()
    findings = client.get(FINDINGS, headers=auth).json()
    right_sizing = {f["workload"]: f for f in findings if f["kind"] == "model_right_sizing"}
    assert set(right_sizing) == set(shapes), findings
    assert {f["status"] for f in findings} == {"open"}
    triage, tagger, classifier, legacy = (right_sizing[w]["id"] for w in shapes)

    # Dismissed with a reason (required, named when missing); a dismissed one is not adopted.
    missing = client.post(f"{FINDINGS}/{legacy}/dismiss", headers=auth, json={})
    assert missing.status_code == 422, missing.text
    assert missing.json()["errors"][0]["field"].endswith("reason"), missing.text
    dismissed = client.post(f"{FINDINGS}/{legacy}/dismiss", headers=auth,
                            json={"reason": "retired next month"})  # fmt: skip
    assert (dismissed.json()["status"], dismissed.json()["status_reason"]) == (
        "dismissed", "retired next month",
    )  # fmt: skip
    assert client.post(f"{FINDINGS}/{legacy}/adopt", headers=auth).status_code == 409

    adopted = {}
    for chosen in (triage, tagger, classifier):
        answer = client.post(f"{FINDINGS}/{chosen}/adopt", headers=auth)
        assert answer.status_code == 200, answer.text
        adopted[chosen] = answer.json()
    assert client.post(f"{FINDINGS}/{triage}/adopt", headers=auth).status_code == 409
    baseline = adopted[triage]["baseline"]
    assert (baseline["priced_calls"], baseline["cost_per_call_usd"]) == (200, "0.004150")
    verify_until = parse_time(adopted[triage]["verify_until"])
    verify_from = verify_until - timedelta(days=7)
    adopted_at = parse_time(adopted[triage]["adopted_at"])
    assert verify_from - timedelta(hours=1) < adopted_at <= verify_from  # the next whole hour

    # The verification week: triage moved to gpt-4.1-nano; tagger did not change; classifier
    # moved too, but 20 of its 100 calls now fail.
    week = spread(verify_from + timedelta(hours=1), verify_until - timedelta(hours=1), 100)
    send([priced_call("triage", "gpt-4.1-nano", at, 1500, 40) for at in week]
         + [priced_call("tagger", "gpt-4o", at, 400, 10) for at in week]
         + [priced_call("classifier", "gpt-4.1-nano", at, 300, 0 if i % 5 == 0 else 15,
                        "error" if i % 5 == 0 else "ok") for i, at in enumerate(week)])  # fmt: skip
    decided = billing_cycle(database_url, redis_server.url, verify_until + timedelta(minutes=5),
                            **payments.apex_settings())  # fmt: skip
    assert decided.returncode == 0, decided.stderr[-2000:]
    assert "Findings decided: 3." in decided.stderr, decided.stderr

    def finding(finding_id: str) -> dict[str, Any]:
        answer = client.get(f"{FINDINGS}/{finding_id}", headers=auth)
        assert answer.status_code == 200, answer.text
        found: dict[str, Any] = answer.json()
        return found

    assert finding(triage)["status"] == "verified", finding(triage)
    assert finding(triage)["verification"]["cost_per_call_usd"] == "0.000166"
    assert (finding(tagger)["status"], finding(tagger)["status_reason"].split(":")[0]) == (
        "not_realised", "no_saving",
    )  # fmt: skip
    assert finding(classifier)["status"] == "not_realised"
    assert finding(classifier)["status_reason"].startswith("quality_regressed: the error rate")

    # After verification, until the period ends: 3,000 calls on nano and 50 still on gpt-4o.
    subscription = client.get(f"{BILLING}/subscription", headers=auth).json()
    period_end = parse_time(subscription["period_end"])
    last_hour = period_end.replace(minute=0, second=0, microsecond=0)
    billed_span = spread(
        verify_until + timedelta(minutes=1), last_hour - timedelta(minutes=1), 3050
    )
    after = [priced_call("triage", "gpt-4.1-nano" if i % 61 else "gpt-4o", at, 1500, 40)
             for i, at in enumerate(billed_span)]  # fmt: skip
    after += [priced_call("tagger", "gpt-4o", at, 400, 10) for at in billed_span[:100]]
    send(after)
    triage_after = [r for r in after if r["workload"] == "triage"]
    saving = sum(Decimal("0.00415") - Decimal(r["cost_usd"]) for r in triage_after)
    expected_cents = half_up(saving * EARLY_SAVINGS_SHARE * 100)
    assert expected_cents > 100  # the figures above make a visible line

    mail = SharedMail.get()
    seen_mail = mail.keys()
    for _ in range(2):  # a second cycle at the same moment bills nothing more
        renewed = billing_cycle(database_url, redis_server.url, period_end + timedelta(minutes=5),
                                **payments.apex_settings())  # fmt: skip
        assert renewed.returncode == 0, renewed.stderr[-2000:]
    invoices = client.get(f"{BILLING}/invoices", headers=auth).json()
    assert [i["reason"] for i in invoices] == ["subscription_cycle", "subscription_create"]
    detail = client.get(f"{BILLING}/invoices/{invoices[0]['id']}", headers=auth).json()
    shares = [line for line in detail["lines"] if line["kind"] == "savings_share"]
    assert len(shares) == 1, detail["lines"]
    assert Decimal(shares[0]["amount_usd"]) * 100 == expected_cents, (shares, saving)
    assert "Move triage" in shares[0]["description"]
    # The one run of the period, at Early's $0.20 a run.
    runs = [(line["quantity"], line["amount_usd"]) for line in detail["lines"]
            if line["kind"] == "agent_runs"]  # fmt: skip
    assert runs == [(1, "0.20")], detail["lines"]
    # The owner is mailed the invoice, line by line, when it is issued.
    owner_email = client.get("/api/v1/users/me", headers=auth).json()["email"]
    assert wait_until(
        lambda: any(m["Subject"] == "Apex invoice 2" for _, m in mail.mails_since(seen_mail)), 30
    )
    (issued,) = [m for _, m in mail.mails_since(seen_mail) if m["Subject"] == "Apex invoice 2"]
    assert issued["To"] == owner_email
    text = mail_text(issued)
    assert f"${Decimal(invoices[0]['total_usd']):,}." in text, text
    assert f"{shares[0]['description']}: ${shares[0]['amount_usd']}" in text, text
    billed = finding(triage)["savings"]
    assert [(Decimal(s["saving_usd"]), s["invoice_id"], s["calls"]) for s in billed] == [
        (saving, invoices[0]["id"], 3050)
    ]
    assert finding(tagger)["savings"] == []
    assert finding(classifier)["savings"] == []
    client.close()


def test_refund_integration(
    database_url: str,
    redis_server: RedisServer,
    start_apex: Callable[..., ApexServer],
    start_worker: Callable[..., ApexWorker],
    payments: PaymentsServer,
) -> None:
    """An operator refunds part of a paid $99.00 invoice, then the rest after the gateway's
    answer was lost (a timeout: the retry sends the same key, the gateway refunds once).
    Nothing beyond what was paid; owners cannot refund; a refused refund says why."""
    operator_email = f"operator-{uuid.uuid4().hex[:8]}@example.test"
    settings = {**payments.apex_settings(), "operator_emails": operator_email,
                "stripe_timeout_seconds": "1", "stripe_network_retries": "0"}  # fmt: skip
    server = start_apex(database_url, redis_server.url, **settings)
    start_worker(database_url, redis_server.url, **payments.apex_settings())
    payments.send_webhooks_to(server.base_url + WEBHOOK)
    client = server.client(timeout=30)
    owner = bearer(signup(client))
    operator = bearer(signup(client, email=operator_email))
    checkout = client.post(f"{BILLING}/checkout", headers=owner, json={"tier": "early"})
    assert payments.pay_checkout(checkout.json()["url"], SUCCESS).status_code == 303

    def paid() -> list[str]:
        found = client.get(f"{BILLING}/invoices", headers=owner).json()
        return [i["id"] for i in found if i["status"] == "paid"]

    assert wait_until(lambda: paid() != [], 30)
    (invoice,) = paid()
    refunds = f"/api/v1/operator/invoices/{invoice}/refunds"
    (charge,) = [c for c in payments.ledger()["charges"] if c["status"] == "succeeded"
                 and c["metadata"]["invoice_id"] == invoice]  # fmt: skip

    def gateway_refunds() -> list[tuple[str, int]]:
        return [(r["payment_intent"], r["amount"]) for r in payments.ledger()["refunds"]
                if r["payment_intent"] == charge["id"]]  # fmt: skip

    assert client.post(refunds, headers=owner, json={"reason": "x"}).status_code == 403
    too_much = client.post(refunds, headers=operator,
                           json={"amount_usd": "99.01", "reason": "goodwill"})  # fmt: skip
    assert too_much.status_code == 422, too_much.text
    assert too_much.json()["errors"][0]["field"] == "amount_usd"
    part = client.post(refunds, headers=operator, json={"amount_usd": "30.00", "reason": "outage"})
    assert part.status_code == 201, part.text
    assert (part.json()["status"], part.json()["amount_usd"]) == ("succeeded", "30.00")
    assert gateway_refunds() == [(charge["id"], 3_000)]

    # The gateway refunds the rest but its answer comes after Apex gave up: 503, pending.
    payments.script(delay_after_refund=3)
    lost = client.post(refunds, headers=operator, json={"reason": "cancelled in week one"})
    assert lost.status_code == 503, lost.text
    assert gateway_refunds() == [(charge["id"], 3_000), (charge["id"], 6_900)]
    detail = client.get(f"{BILLING}/invoices/{invoice}", headers=owner).json()
    assert [(r["amount_usd"], r["status"]) for r in detail["refunds"]] == [
        ("30.00", "succeeded"), ("69.00", "pending"),
    ]  # fmt: skip
    # Asking again completes that refund (same key): no third refund at the gateway.
    again = client.post(refunds, headers=operator, json={"reason": "cancelled in week one"})
    assert again.status_code == 201, again.text
    assert (again.json()["status"], again.json()["number"]) == ("succeeded", 2)
    assert gateway_refunds() == [(charge["id"], 3_000), (charge["id"], 6_900)]
    detail = client.get(f"{BILLING}/invoices/{invoice}", headers=owner).json()
    assert (detail["refunded_usd"], detail["total_usd"]) == ("99.00", "99.00")
    done = client.post(refunds, headers=operator, json={"reason": "again"})
    assert done.status_code == 409, done.text
    client.close()
