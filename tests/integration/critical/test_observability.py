"""Observability, the sixth critical path: what operators see of a running Apex.

`test_health_check_cascade_integration` runs a real `apex serve` and `apex worker` against
their own PostgreSQL and redis-server, an LLM provider double, the payment gateway double and
an SMTP server, kills each dependency in turn and reads `/health/ready` as a load balancer
does.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest

from tests.harness import ApexServer, ApexWorker, PostgresCluster, RedisServer
from tests.harness.llm import LlmServer
from tests.harness.payments import PaymentsServer
from tests.harness.procs import wait_until
from tests.harness.smtp import SmtpServer
from tests.harness.webhooks import WebhookReceiver
from tests.integration.conftest import SharedMail
from tests.integration.critical.conftest import bearer, signup

PROBE_INTERVAL = 0.5  # health_probe_interval_seconds of the server under test
CHECK_TIMEOUT = 1.0  # health_check_timeout
HEARTBEAT = 0.5  # worker_heartbeat_seconds: a worker is gone after 3 silent heartbeats
GRACE = 3.0  # shutdown_grace_seconds
# "Within one interval": the background probe interval plus one probe's own time limit (a
# worker is gone after three missed heartbeats); the slack absorbs a loaded CI machine.
DETECT_WITHIN = {"background": PROBE_INTERVAL + CHECK_TIMEOUT, "queue": 3 * HEARTBEAT}
SLACK = 3.0

# Written out by hand: the dependency killed → (the checks that must fail, HTTP status of
# /health/ready, its overall status). Redis carries the job queue, so the queue fails with it.
CASCADE: dict[str, tuple[set[str], int, str]] = {
    "llm": ({"llm:openai"}, 200, "degraded"),
    "payments": ({"payments"}, 200, "degraded"),
    "mail": ({"mail"}, 200, "degraded"),
    "worker": ({"queue"}, 200, "degraded"),
    "redis": ({"redis", "queue"}, 503, "fail"),
    "postgres": ({"database"}, 503, "fail"),
}
ALL_CHECKS = {"database", "redis", "queue", "llm:openai", "payments", "mail"}


class Dependencies:
    """Every dependency of the server under test, each one killable and restartable."""

    def __init__(
        self,
        postgres: PostgresCluster,
        redis: RedisServer,
        llm: LlmServer,
        payments: PaymentsServer,
        mail: SmtpServer,
        start_worker: Callable[[], ApexWorker],
    ) -> None:
        self.services: dict[str, Any] = {
            "postgres": postgres, "redis": redis, "llm": llm, "payments": payments, "mail": mail,
        }  # fmt: skip
        self.start_worker = start_worker
        self.worker = start_worker()

    def kill(self, name: str) -> None:
        if name == "worker":
            self.worker.kill()
        else:
            self.services[name].kill()

    def restore(self, name: str) -> None:
        if name == "worker":
            self.worker = self.start_worker()
        else:
            self.services[name].start()


def _ready(client: httpx.Client) -> tuple[int, dict[str, Any]]:
    response = client.get("/health/ready")
    return response.status_code, response.json()


def _failing(body: dict[str, Any]) -> set[str]:
    return {check["name"] for check in body["checks"] if check["status"] == "fail"}


Answer = tuple[int, dict[str, Any]]


def _wait_for(
    client: httpx.Client, want: Callable[[int, dict[str, Any]], bool], within: float
) -> tuple[Answer, float]:
    """Poll readiness until `want` holds; the last answer and how long it took."""
    started = time.monotonic()
    seen: list[tuple[int, dict[str, Any]]] = []

    def check() -> bool:
        seen.append(_ready(client))
        return want(*seen[-1])

    wait_until(check, within, interval=0.05)
    return seen[-1], time.monotonic() - started


@pytest.fixture
def services() -> Iterator[tuple[LlmServer, PaymentsServer, SmtpServer]]:
    llm, payments, mail = LlmServer().start(), PaymentsServer().start(), SmtpServer().start()
    yield llm, payments, mail
    for service in (llm, payments, mail):
        service.stop()


def test_health_check_cascade_integration(
    fresh_postgres: PostgresCluster,
    fresh_redis: RedisServer,
    services: tuple[LlmServer, PaymentsServer, SmtpServer],
    start_apex: Callable[..., ApexServer],
    start_worker: Callable[..., ApexWorker],
) -> None:
    llm, payments, mail = services
    fresh_postgres.create_database("apex")
    database_url = fresh_postgres.url("apex")
    operator = "ops@example.test"
    server = start_apex(
        database_url, fresh_redis.url, auto_migrate="true",
        llm_provider="openai", llm_base_url=llm.base_url, llm_api_key="sk-test",
        **payments.apex_settings(), smtp_url=mail.url, operator_emails=operator,
        health_probe_interval_seconds=str(PROBE_INTERVAL),
        health_check_timeout=str(CHECK_TIMEOUT),
        worker_heartbeat_seconds=str(HEARTBEAT), shutdown_grace_seconds=str(GRACE),
    )  # fmt: skip
    dependencies = Dependencies(
        fresh_postgres, fresh_redis, llm, payments, mail,
        lambda: start_worker(database_url, fresh_redis.url, smtp_url=mail.url,
                             worker_heartbeat_seconds=str(HEARTBEAT)),
    )  # fmt: skip

    def healthy(status: int, body: dict[str, Any]) -> bool:
        return status == 200 and body["status"] == "ok"

    with server.client() as client:
        (status, body), _ = _wait_for(client, healthy, 15)
        assert (status, body["status"], body["reasons"]) == (200, "ok", [])
        assert {check["name"] for check in body["checks"]} == ALL_CHECKS
        assert next(c for c in body["checks"] if c["name"] == "queue")["details"]["workers"] == 1
        auth = bearer(signup(client, mail_server=mail, email=operator))

        measured: dict[str, tuple[float, float]] = {}
        for name, (failing, code, overall) in CASCADE.items():
            killed_at = datetime.now(UTC)
            dependencies.kill(name)

            def in_state(
                status: int, body: dict[str, Any], want: tuple[int, str] = (code, overall)
            ) -> bool:
                return (status, body["status"]) == want

            (status, body), detected = _wait_for(client, in_state, 30)
            assert (status, body["status"]) == (code, overall), (name, body)
            assert _failing(body) == failing, name
            limit = DETECT_WITHIN["queue" if name == "worker" else "background"] + SLACK
            assert detected <= limit, f"{name}: seen after {detected:.2f}s"
            for check in body["checks"]:
                if check["name"] in failing:
                    assert check["error"], name
                    since = datetime.fromisoformat(check["since"])
                    assert killed_at <= since <= datetime.now(UTC), (name, check)
                    assert any(
                        reason.startswith(f"{check['name']} (") for reason in body["reasons"]
                    )
            assert client.get("/health/live").status_code == 200

            dependencies.restore(name)
            (status, body), recovered = _wait_for(client, healthy, 30)
            assert (status, body["status"], _failing(body)) == (200, "ok", set()), (name, body)
            measured[name] = (detected, recovered)

        # The operator view explains: every check that failed, and when it came back.
        report = client.get("/api/v1/operator/health", headers=auth)
        assert report.status_code == 200, report.text
        changes = [(t["check"], t["status"]) for t in reversed(report.json()["transitions"])]
        for name, (failing, _, _) in CASCADE.items():
            for check in failing:
                assert (check, "fail") in changes, (name, changes)
                fail_at = changes.index((check, "fail"))
                assert (check, "ok") in changes[fail_at:], (name, changes)
        stranger = bearer(signup(client, mail_server=mail))
        assert client.get("/api/v1/operator/health", headers=stranger).status_code == 403

        _assert_drains_before_stopping(server, client, auth)

    print(
        "detected, recovered (s):",
        {k: (round(a, 2), round(b, 2)) for k, (a, b) in measured.items()},
    )
    assert "Traceback" not in server.logs()


def _assert_drains_before_stopping(
    server: ApexServer, client: httpx.Client, auth: dict[str, str]
) -> None:
    """SIGTERM: readiness fails at once while requests are still served for the grace
    period; only then does the server stop listening, and it exits cleanly."""
    assert server.process is not None
    not_ready_at: float | None = None
    served_after_not_ready = 0
    server.process.signal_group(signal.SIGTERM)
    signalled = time.monotonic()
    while time.monotonic() - signalled < GRACE + 15:
        try:
            ready = client.get("/health/ready")
            me = client.get("/api/v1/users/me", headers=auth)
        except httpx.TransportError:
            break  # no longer listening
        if ready.status_code == 503 and not_ready_at is None:
            assert ready.json()["status"] == "draining"
            assert ready.json()["reasons"][0] == "shutting down: SIGTERM received"
            not_ready_at = time.monotonic()
        if me.status_code == 200 and not_ready_at is not None:
            served_after_not_ready += 1
        time.sleep(0.05)
    assert not_ready_at is not None
    assert not_ready_at - signalled < 1.0  # readiness fails first …
    assert served_after_not_ready >= 5  # … while the instance still serves
    # uvicorn re-raises the SIGTERM it handled once shut down: that is its clean exit.
    assert server.process.popen.wait(timeout=15) in (0, -signal.SIGTERM)
    logs = server.logs()
    assert logs.index("health_draining") < logs.index("apex_stopped")


# --- customer alerts --------------------------------------------------------------------------

EVALUATE_EVERY = 0.5  # alert_evaluation_seconds of both workers
RETRY_BASE = 0.5  # alert_retry_base_seconds
CALL_COST = Decimal("0.125")  # what each call reports it cost
THRESHOLD = Decimal("10.00")  # the rule fires above $10 over the last hour


def _calls(prefix: str, count: int) -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    return [{"id": f"{prefix}-{i}", "timestamp": now.isoformat(), "provider": "openai",
             "model": "gpt-4o", "workload": "support-bot", "input_tokens": 1000,
             "output_tokens": 200, "cost_usd": str(CALL_COST), "end_user": f"user-{i % 7}"}
            for i in range(count)]  # fmt: skip


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver().start()
    yield server
    server.destroy()


def test_alert_notification_integration(
    fresh_postgres: PostgresCluster,
    fresh_redis: RedisServer,
    receiver: WebhookReceiver,
    start_apex: Callable[..., ApexServer],
    start_worker: Callable[..., ApexWorker],
) -> None:
    fresh_postgres.create_database("apex")
    database_url = fresh_postgres.url("apex")
    server = start_apex(database_url, fresh_redis.url, auto_migrate="true",
                        alert_webhooks_allow_private="true")  # fmt: skip
    workers = {"alert_evaluation_seconds": str(EVALUATE_EVERY),
               "alert_retry_base_seconds": str(RETRY_BASE),
               "alert_webhooks_allow_private": "true"}  # fmt: skip
    # Two workers evaluate every rule at once: the notices must still go out once.
    for _ in range(2):
        start_worker(database_url, fresh_redis.url, **workers)
    mail = SharedMail.get()
    seen_mail = mail.keys()
    inbox = f"oncall-{uuid.uuid4().hex[:8]}@example.test"
    hook, slack = "/hooks/spend", "/slack/spend"

    with server.client() as client:
        auth = bearer(signup(client))
        rule = client.post("/api/v1/alerts/rules", headers=auth, json={
            "name": "LLM spend over $10 an hour", "kind": "spend", "threshold": str(THRESHOLD),
            "window_minutes": 60,
            "channels": [{"type": "email", "to": inbox},
                         {"type": "webhook", "url": receiver.url + hook},
                         {"type": "slack", "url": receiver.url + slack}],
        })  # fmt: skip
        assert rule.status_code == 201, rule.text
        rule_id, secret = rule.json()["id"], rule.json()["webhook_secret"]
        assert secret.startswith("whsec_")
        assert "webhook_secret" not in client.get(f"/api/v1/alerts/rules/{rule_id}",
                                                  headers=auth).json()  # fmt: skip
        receiver.verify_with(secret)

        # $7.50 in the hour: under the threshold, nothing fires however often it is evaluated.
        sent = client.post("/api/v1/usage/events", headers=auth, json={"records": _calls("a", 60)})
        assert sent.json()["accepted"] == 60, sent.text
        assert wait_until(lambda: _rule(client, auth, rule_id)["last_value"] is not None, 15)
        time.sleep(4 * EVALUATE_EVERY)
        under = _rule(client, auth, rule_id)
        assert (Decimal(under["last_value"]), under["state"]) == (60 * CALL_COST, "ok")
        assert client.get("/api/v1/alerts/events", headers=auth).json() == []

        # $12.50: it fires, once per channel.
        sent = client.post("/api/v1/usage/events", headers=auth, json={"records": _calls("b", 40)})
        assert sent.json()["accepted"] == 40, sent.text
        assert wait_until(lambda: len(receiver.received(hook)) >= 1
                          and len(receiver.received(slack)) >= 1, 20)  # fmt: skip
        firing_mail = mail.next_mail(inbox, seen=seen_mail, subject="FIRING", timeout=20)
        time.sleep(6 * EVALUATE_EVERY)  # more passes of both workers: nothing more is sent
        fired = receiver.received(hook)
        assert len(fired) == 1
        assert len(receiver.received(slack)) == 1
        assert fired[0]["signature_valid"] is True
        body = fired[0]["body"]
        assert (body["type"], body["rule"]["id"]) == ("alert.firing", rule_id)
        assert Decimal(body["event"]["value"]) == 100 * CALL_COST  # $12.50, to the cent
        assert Decimal(body["event"]["threshold"]) == THRESHOLD
        assert fired[0]["headers"]["apex-delivery-id"] == body["id"]
        assert "$12.50" in receiver.received(slack)[0]["body"]["text"]
        assert "$12.50" in str(firing_mail.get_payload())
        assert "$10.00" in str(firing_mail.get_payload())
        events = client.get("/api/v1/alerts/events", headers=auth).json()
        assert [(e["rule_id"], e["state"]) for e in events] == [(rule_id, "firing")]
        assert _rule(client, auth, rule_id)["state"] == "firing"

        # The receiver goes down; the rule is raised to $20, so the alert resolves. The mail goes
        # at once; both webhooks are retried until the receiver is back, then delivered once.
        seen_firing = mail.keys()  # the firing mail and everything before it
        receiver.stop()
        raised = client.patch(f"/api/v1/alerts/rules/{rule_id}", headers=auth,
                              json={"threshold": "20"})  # fmt: skip
        assert raised.status_code == 200, raised.text
        resolved_mail = mail.next_mail(inbox, seen=seen_firing, subject="RESOLVED", timeout=20)
        assert "$12.50" in str(resolved_mail.get_payload())
        event_id = events[0]["id"]
        log_url = f"/api/v1/alerts/events/{event_id}/deliveries"

        def retried() -> bool:
            resolved = [d for d in client.get(log_url, headers=auth).json()
                        if d["notice"] == "resolved" and d["channel"] != "email"]  # fmt: skip
            return len(resolved) == 2 and all(d["attempts"] >= 2 for d in resolved)

        assert wait_until(retried, 20)
        pending = [d for d in client.get(log_url, headers=auth).json() if d["status"] == "pending"]
        assert {d["channel"] for d in pending} == {"webhook", "slack"}
        assert all(d["last_error"] and d["delivered_at"] is None for d in pending)

        receiver.start()
        assert wait_until(lambda: len(receiver.received(hook)) == 2
                          and len(receiver.received(slack)) == 2, 30)  # fmt: skip
        time.sleep(6 * EVALUATE_EVERY)
        resolved_hook = receiver.received(hook)[1]
        assert len(receiver.received(hook)) == 2
        assert len(receiver.received(slack)) == 2
        assert resolved_hook["signature_valid"] is True
        assert resolved_hook["body"]["type"] == "alert.resolved"
        assert resolved_hook["body"]["event"]["id"] == event_id
        assert "RESOLVED" in receiver.received(slack)[1]["body"]["text"]
        to_inbox = [m for _, m in mail.mails_since(seen_mail) if m["To"] == inbox]
        assert sorted(str(m["Subject"]).split(":")[0] for m in to_inbox) == [
            "[Apex] FIRING", "[Apex] RESOLVED"]  # fmt: skip

        log = client.get(log_url, headers=auth).json()
        assert sorted((d["notice"], d["channel"], d["status"]) for d in log) == [
            ("firing", "email", "delivered"), ("firing", "slack", "delivered"),
            ("firing", "webhook", "delivered"), ("resolved", "email", "delivered"),
            ("resolved", "slack", "delivered"), ("resolved", "webhook", "delivered"),
        ]  # fmt: skip
        assert all(d["response_status"] == 200 for d in log if d["channel"] != "email")
        events = client.get("/api/v1/alerts/events", headers=auth).json()
        assert [(e["id"], e["state"]) for e in events] == [(event_id, "resolved")]


def _rule(client: httpx.Client, auth: dict[str, str], rule_id: str) -> dict[str, Any]:
    response = client.get(f"/api/v1/alerts/rules/{rule_id}", headers=auth)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body
