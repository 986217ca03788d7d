"""Observability, the sixth critical path: what operators see of a running Apex.

`test_health_check_cascade_integration` runs a real `apex serve` and `apex worker` against
their own PostgreSQL and redis-server, an LLM provider double, the payment gateway double and
an SMTP server, kills each dependency in turn and reads `/health/ready` as a load balancer
does.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import ApexServer, ApexWorker, PostgresCluster, RedisServer
from tests.harness.llm import LlmServer
from tests.harness.otlp import OtlpReceiver
from tests.harness.payments import PaymentsServer
from tests.harness.procs import free_port, wait_until
from tests.harness.prometheus import PrometheusServer
from tests.harness.smtp import SmtpServer
from tests.harness.webhooks import WebhookReceiver
from tests.integration.conftest import SharedMail, apex_env
from tests.integration.critical.conftest import bearer, database_name, signup
from tests.integration.critical.test_realtime import open_session, receive_type

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


def _names_no_address(body: dict[str, Any]) -> bool:
    """Readiness is unauthenticated: every dependency here listens on loopback, so any
    address it gave away would show as one."""
    text = json.dumps(body)
    return "127.0.0.1" not in text and "localhost" not in text


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
        assert _names_no_address(body), body
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
            assert _names_no_address(body), body
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
        llm_host = urlsplit(llm.base_url).netloc
        llm_check = next(c for c in report.json()["checks"] if c["name"] == "llm:openai")
        assert llm_check["details"]["host"] == llm_host, llm_check  # operators see where
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
        # Stored sealed with APEX_SECRET_KEY: a copy of the database alone signs nothing.
        query = f"SELECT webhook_secret FROM alert_rules WHERE id = '{rule_id}'"  # noqa: S608
        stored = fresh_postgres.sql(query, "apex").strip()
        assert stored.startswith("sealed:v1:"), stored
        assert secret not in stored
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


# --- metrics scraped by a real Prometheus, product telemetry --------------------------------

METRICS_TOKEN = "scrape-" + uuid.uuid4().hex
EVENTS = "/api/v1/usage/events"


def _record(record_id: str) -> dict[str, Any]:
    return {"id": record_id, "timestamp": datetime.now(UTC).isoformat(), "provider": "openai",
            "model": "gpt-4o-mini", "workload": "search", "input_tokens": 300,
            "output_tokens": 40, "end_user": "u-1"}  # fmt: skip


def _eventually_equal(read: Callable[[], float | None], want: float, within: float) -> float | None:
    """Poll `read` until it equals `want` (Prometheus sees a value one scrape later)."""
    seen: list[float | None] = [None]

    def check() -> bool:
        seen[0] = read()
        return seen[0] == want

    wait_until(check, within, interval=0.2)
    return seen[0]


def test_telemetry_pipeline_integration(
    fresh_postgres: PostgresCluster,
    fresh_redis: RedisServer,
    start_apex: Callable[..., ApexServer],
    start_worker: Callable[..., ApexWorker],
) -> None:
    fresh_postgres.create_database("apex")
    database_url = fresh_postgres.url("apex")
    # Instance 2 would store its product points only every minute: what it holds when it
    # gets SIGTERM (all of them) is stored by the flush on shutdown, or lost.
    servers = [start_apex(database_url, fresh_redis.url, auto_migrate=str(i == 0).lower(),
                          metrics_token=METRICS_TOKEN, shutdown_grace_seconds="1",
                          telemetry_flush_seconds="60" if i == 2 else "0.5")
               for i in range(3)]  # fmt: skip
    worker_port = free_port()
    worker = start_worker(database_url, fresh_redis.url, worker_metrics_port=str(worker_port))
    prometheus = PrometheusServer({
        "apex-serve": ([f"127.0.0.1:{s.port}" for s in servers], METRICS_TOKEN),
        "apex-worker": ([f"127.0.0.1:{worker_port}"], None),
    }).start()  # fmt: skip
    try:
        every_target_up = ["up"] * 4
        assert wait_until(lambda: list(prometheus.targets_up().values()) == every_target_up, 30)
        clients = [server.client() for server in servers]
        # Without the token, /metrics is refused even to a loopback client.
        assert clients[0].get("/metrics").status_code == 403
        auth = bearer(signup(clients[0]))
        accepted_by = _assert_exact_request_and_record_counts(prometheus, servers, clients, auth)
        assert "apex_queue_backlog" in httpx.get(f"http://127.0.0.1:{worker_port}/metrics").text
        assert prometheus.scalar('up{job="apex-worker"}') == 1
        _assert_product_points_survive_sigterm(fresh_postgres, servers, clients, auth, accepted_by)
        for client in clients:
            client.close()
    finally:
        prometheus.destroy()
    assert worker.process is not None
    assert worker.process.alive()


def _assert_exact_request_and_record_counts(
    prometheus: PrometheusServer,
    servers: list[ApexServer],
    clients: list[httpx.Client],
    auth: dict[str, str],
) -> dict[int, int]:
    """A scripted workload, counted here as it is sent; PromQL over what Prometheus scraped
    from the three instances must give the same numbers exactly."""
    sent = {i: 0 for i in range(3)}  # POST /usage/events answered 200, per instance
    accepted_by = {i: 0 for i in range(3)}
    verdicts = {"accepted": 0, "duplicate": 0, "rejected": 0}
    for n in range(30):
        i = n % 3
        batch = [_record(f"prom-{n}-{k}") for k in range(10)]
        if n % 5 == 0:
            batch.append({"id": f"prom-{n}-bad", "input_tokens": -1})  # rejected
        if n % 6 == 0:
            batch.append(_record(f"prom-{n}-0"))  # a duplicate within the batch
        answer = clients[i].post(EVENTS, headers=auth, json={"records": batch})
        assert answer.status_code == 200, answer.text
        sent[i] += 1
        body = answer.json()
        accepted_by[i] += body["accepted"]
        for verdict, field in (("accepted", "accepted"), ("duplicate", "duplicates"),
                               ("rejected", "rejected")):  # fmt: skip
            verdicts[verdict] += body[field]
    assert verdicts == {"accepted": 300, "duplicate": 5, "rejected": 6}
    for client in clients:  # one unmatched path per instance, to see it labelled so
        assert client.get("/api/v1/no-such-thing", headers=auth).status_code == 404

    posted = (
        'sum(apex_http_requests_total{route="/api/v1/usage/events",method="POST",status="200"})'
    )
    assert _eventually_equal(lambda: prometheus.scalar(posted), 30, 20) == 30
    by_instance = prometheus.query(
        'sum by (instance) (apex_http_requests_total{route="/api/v1/usage/events",method="POST"})'
    )
    port_of = {f"127.0.0.1:{s.port}": i for i, s in enumerate(servers)}
    assert {port_of[r["metric"]["instance"]]: float(r["value"][1]) for r in by_instance} == {
        i: float(count) for i, count in sent.items()
    }
    for verdict, count in verdicts.items():
        assert prometheus.scalar(f'sum(apex_usage_records_total{{verdict="{verdict}"}})') == count
    unmatched = 'sum(apex_http_requests_total{route="unmatched",status="404"})'
    assert _eventually_equal(lambda: prometheus.scalar(unmatched), 3, 10) == 3
    assert prometheus.scalar("count(apex_http_request_duration_seconds_count)") is not None
    assert prometheus.scalar('count(apex_db_pool_in_use{job="apex-serve"})') == 3
    # Every instance reports its cache lookups by result (the hit ratio's two sides).
    assert prometheus.scalar('count(apex_cache_lookups_total{job="apex-serve"})') == 3 * 4
    return accepted_by


def _assert_product_points_survive_sigterm(
    postgres: PostgresCluster,
    servers: list[ApexServer],
    clients: list[httpx.Client],
    auth: dict[str, str],
    accepted_by: dict[int, int],
) -> None:
    """1,000 more records, one per request, round-robin over the three instances; instance 2
    gets SIGTERM a third of the way in, and what it no longer takes goes to the next one.
    Every accepted record is counted in one product point: all of them stored, each by the
    instance that accepted it, the stopped one's included."""
    for n in range(1000):
        if n == 333:
            assert servers[2].process is not None
            servers[2].process.signal_group(signal.SIGTERM)
        for i in (n % 3, (n + 1) % 3, (n + 2) % 3):
            try:
                answer = clients[i].post(EVENTS, headers=auth,
                                         json={"records": [_record(f"point-{n}")]})  # fmt: skip
            except httpx.TransportError:
                assert (i, n >= 333) == (2, True), n
                continue  # it stopped listening: the next instance takes the record
            assert answer.status_code == 200, answer.text
            assert answer.json()["accepted"] == 1, answer.text
            accepted_by[i] += 1
            break
    assert sum(accepted_by.values()) == 1300
    assert 333 // 3 <= accepted_by[2] < 1300 // 3  # it took its share until SIGTERM, then none
    stopped = servers[2].process
    assert stopped is not None
    assert stopped.popen.wait(timeout=20) in (0, -signal.SIGTERM)

    database = database_name(servers[0].env["APEX_DATABASE_URL"])
    instance_of = {server.process.pid: i for i, server in enumerate(servers) if server.process}

    def stored() -> dict[int, int]:
        rows = postgres.sql(
            "SELECT instance, sum(value) FROM telemetry_points "
            "WHERE metric = 'usage.records' GROUP BY instance",
            database,
        ).split()
        return {instance_of[int(r.split("|")[0].rsplit(":", 1)[1])]: int(r.split("|")[1])
                for r in rows}  # fmt: skip

    assert wait_until(lambda: stored() == accepted_by, 15), (stored(), accepted_by)
    total = clients[0].get("/api/v1/telemetry", headers=auth, params={"bucket": "hour"})
    assert total.status_code == 200, total.text
    assert total.json()["total"] == 1300
    assert "Traceback" not in servers[2].logs()


# --- distributed tracing ---------------------------------------------------------------------


def _short_calls(tag: str) -> list[dict[str, Any]]:
    """Yesterday's short calls on a big model: the run finds them a cheaper model."""
    yesterday = datetime.now(UTC) - timedelta(days=1)
    return [{"id": f"{tag}-{i}", "provider": "openai", "model": "gpt-4o", "workload": "triage",
             "timestamp": (yesterday + timedelta(minutes=i)).isoformat(),
             "input_tokens": 500, "output_tokens": 20, "end_user": f"u{i % 5}"}
            for i in range(60)]  # fmt: skip


async def _ask_in_chat(server: ApexServer, token: str, question: str) -> None:
    ws = await open_session(server, token)
    await ws.send(json.dumps({"type": "create_thread", "payload": {"title": "Savings"}}))
    thread_id = (await receive_type(ws, "thread_created"))["payload"]["thread"]["id"]
    await ws.send(json.dumps({"type": "switch_thread", "payload": {"thread_id": thread_id}}))
    await receive_type(ws, "thread_switched")  # following it: the run's events come here
    asked = {"type": "user_message", "id": "q1",
             "payload": {"thread_id": thread_id, "content": question}}  # fmt: skip
    await ws.send(json.dumps(asked))
    seen: list[str] = []
    try:
        async with asyncio.timeout(90):  # the run's events come back through the thread
            while not seen or seen[-1] != "final_report":
                frame = json.loads(await ws.recv())
                seen.append(frame["type"] if frame["type"] != "error" else str(frame))
    except TimeoutError:
        raise AssertionError(f"no final report; frames: {seen}") from None
    await ws.close()


def _samples(exposition: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text → {(sample name, sorted labels): value} (parsed by prometheus_client,
    not by the code under test)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }


def _ancestors(span: dict[str, Any], by_id: dict[str, dict[str, Any]]) -> list[str]:
    names = []
    while span["parent_span_id"] is not None:
        span = by_id[span["parent_span_id"]]
        names.append(span["name"])
    return names


def test_distributed_tracing_integration(
    fresh_postgres: PostgresCluster, fresh_redis: RedisServer
) -> None:
    fresh_postgres.create_database("apex")
    database_url = fresh_postgres.url("apex")
    otlp, llm = OtlpReceiver().start(), LlmServer().start()
    exported = {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint}
    provider = {"llm_provider": "openai", "llm_base_url": llm.base_url, "llm_api_key": "sk-test"}
    server = ApexServer({**apex_env(database_url, fresh_redis.url, auto_migrate="true",
                                    **provider), **exported})  # fmt: skip
    worker_port = free_port()
    worker = ApexWorker({**apex_env(database_url, fresh_redis.url, worker_metrics_port=str(
        worker_port), **provider), **exported})  # fmt: skip
    try:
        server.start()
        worker.start()
        with server.client() as client:
            answer = signup(client)
            sent = client.post(EVENTS, headers=bearer(answer),
                               json={"records": _short_calls("trace")})  # fmt: skip
            assert sent.json()["accepted"] == 60, sent.text
            # A caller's W3C context is continued: the server's span is its child.
            caller_trace, caller_span = uuid.uuid4().hex, uuid.uuid4().hex[:16]
            traceparent = f"00-{caller_trace}-{caller_span}-01"
            me = client.get(
                "/api/v1/users/me", headers={**bearer(answer), "traceparent": traceparent}
            )
            assert me.headers["x-trace-id"] == caller_trace
        asyncio.run(_ask_in_chat(server, answer.json()["access_token"], "Where can we save?"))

        def the_trace() -> list[dict[str, Any]]:
            spans = otlp.spans()
            roots = [s for s in spans if s["name"] == "WS user_message"]
            if len(roots) != 1:
                return []
            found = [s for s in spans if s["trace_id"] == roots[0]["trace_id"]]
            steps = [s for s in found if s["name"].startswith("agent.step ")]
            jobs = [s for s in found if s["name"] == "job apex.agents.run_step"]
            done = len(jobs) >= 2 and len(steps) == len(jobs)
            return found if done and not any(s["name"] == "job" for s in found) else []

        assert wait_until(lambda: the_trace() != [], 30), otlp.spans()[-20:]
        time.sleep(1.5)  # the exporters' last batches
        spans, everything = the_trace(), otlp.spans()
        trace_id = spans[0]["trace_id"]
        by_id = {s["span_id"]: s for s in spans}
        (root,) = [s for s in spans if s["parent_span_id"] is None]
        assert (root["name"], root["service"], root["kind"]) == ("WS user_message", "apex-serve",
                                                                  "SERVER")  # fmt: skip
        # One trace: every span's parent is in it, and no job ran outside it.
        assert all(s["parent_span_id"] in by_id for s in spans if s is not root)
        assert {s["trace_id"] for s in everything if s["name"].startswith("job ")} == {trace_id}
        assert {s["service"] for s in spans} == {"apex-serve", "apex-worker"}
        jobs = [s for s in spans if s["name"] == "job apex.agents.run_step"]
        steps = [s for s in spans if s["name"].startswith("agent.step ")]
        llm_calls = [s for s in spans if s["name"] == "llm openai"]
        assert all((s["service"], s["kind"]) == ("apex-worker", "CONSUMER") for s in jobs)
        assert all(by_id[s["parent_span_id"]]["name"] == "job apex.agents.run_step" for s in steps)
        # The first job was queued from the chat message; each next one from the step before.
        assert sorted(len(_ancestors(j, by_id)) > 0 for j in jobs) == [True] * len(jobs)
        assert all(_ancestors(j, by_id)[-1] == "WS user_message" for j in jobs)
        # Every LLM call the provider received is a client span under a step.
        assert len(llm_calls) == len(llm.requests()) >= 1
        assert all(
            any(a.startswith("agent.step ") for a in _ancestors(c, by_id)) for c in llm_calls
        )
        for service in ("apex-serve", "apex-worker"):
            names = {s["name"].split()[0] for s in spans if s["service"] == service}
            assert {"SQL", "redis"} <= names, (service, names)
        continuation = [s for s in everything if s["trace_id"] == caller_trace]
        served = [(s["name"], s["parent_span_id"]) for s in continuation if s["kind"] == "SERVER"]
        assert served == [("GET /api/v1/users/me", caller_span)]
        # The same hops, counted in each process's metrics.
        worker_metrics = _samples(httpx.get(f"http://127.0.0.1:{worker_port}/metrics").text)
        server_metrics = _samples(server.client().get("/metrics").text)
        llm_ok = ("apex_llm_calls_total", (("outcome", "ok"), ("provider", "openai")))
        jobs_ok = ("apex_queue_jobs_total", (("outcome", "ok"), ("task", "apex.agents.run_step")))
        asked = ("apex_websocket_messages_total", (("direction", "in"), ("type", "user_message")))
        assert (worker_metrics[llm_ok], worker_metrics[jobs_ok]) == (len(llm_calls), len(jobs))
        assert server_metrics[asked] == 1
        assert server_metrics[("apex_websocket_connections", ())] == 0  # closed again
        # The trace id is in the log lines of both processes.
        for logs in (server.logs(), worker.logs()):
            lines = [json.loads(line) for line in logs.splitlines() if trace_id in line]
            assert lines, "no log line carries the trace id"
            assert all(line["trace_id"] == trace_id for line in lines)
    finally:
        worker.stop()
        server.stop()
        llm.stop()
        otlp.destroy()


# --- log aggregation ---------------------------------------------------------------------------


def test_log_aggregation_integration(
    fresh_postgres: PostgresCluster,
    fresh_redis: RedisServer,
    start_apex: Callable[..., ApexServer],
) -> None:
    """500 requests over three `apex serve` processes, each with its own request id and W3C
    trace: every access line reaches the log store with exact fields, although the store is
    killed after the 250th request and started again after the 400th."""
    fresh_postgres.create_database("apex")
    store = PostgresCluster(name="logstore").init().start()
    store.create_database("logs")
    operator = f"ops-{uuid.uuid4().hex[:8]}@example.test"
    shipping = {"log_store_url": store.url("logs"), "log_ship_seconds": "0.2",
                "operator_emails": operator}  # fmt: skip
    try:
        servers = [start_apex(fresh_postgres.url("apex"), fresh_redis.url,
                              auto_migrate=str(i == 0).lower(), **shipping)
                   for i in range(3)]  # fmt: skip
        clients = [server.client() for server in servers]
        processes = [f"{socket.gethostname()}:{s.process.pid}" for s in servers if s.process]
        answer = signup(clients[0], email=operator)
        auth, organization_id = bearer(answer), answer.json()["organization_id"]
        tag = uuid.uuid4().hex[:8]
        expected: dict[str, dict[str, Any]] = {}
        for n in range(500):
            if n == 250:
                store.kill()
            if n == 400:
                store.start()
            i, trace = n % 3, uuid.uuid4().hex
            request_id = f"agg-{tag}-{n}"
            headers = {**auth, "X-Request-ID": request_id,
                       "traceparent": f"00-{trace}-{uuid.uuid4().hex[:16]}-01"}  # fmt: skip
            assert clients[i].get("/api/v1/users/me", headers=headers).status_code == 200
            expected[request_id] = {
                "event": "request", "level": "info", "service": "apex-serve",
                "process": processes[i],
                "trace_id": trace, "organization_id": organization_id,
                "method": "GET", "path": "/api/v1/users/me", "status": 200,
            }  # fmt: skip

        def stored() -> dict[str, dict[str, Any]]:
            lines = clients[0].get("/api/v1/operator/logs", headers=auth, params={
                "event": "request", "organization_id": organization_id, "limit": 5000,
            })  # fmt: skip
            assert lines.status_code == 200, lines.text
            ours = [line for line in lines.json() if line["request_id"].startswith(f"agg-{tag}-")]
            assert len({line["request_id"] for line in ours}) == len(ours), "a line twice"
            return {line["request_id"]: line for line in ours}

        assert wait_until(lambda: len(stored()) == 500, 30), len(stored())
        lines = stored()
        fields = ("event", "level", "service", "process", "trace_id", "organization_id",
                  "method", "path", "status")  # fmt: skip
        assert {rid: {f: line[f] for f in fields} for rid, line in lines.items()} == expected
        # Joined to its trace: the one line of request 7.
        trace_7 = expected[f"agg-{tag}-7"]["trace_id"]
        joined = clients[0].get("/api/v1/operator/logs", headers=auth,
                                params={"trace_id": trace_7})  # fmt: skip
        assert [line["request_id"] for line in joined.json()] == [f"agg-{tag}-7"]
        # The outage is in the store too: each process said once that shipping failed.
        failed = clients[0].get("/api/v1/operator/logs", headers=auth,
                                params={"event": "batch_flush_failed"}).json()  # fmt: skip
        assert sorted(line["process"] for line in failed) == sorted(processes)
        stranger = bearer(signup(clients[0]))
        assert clients[0].get("/api/v1/operator/logs", headers=stranger).status_code == 403
        for client in clients:
            client.close()
    finally:
        store.destroy()
