"""The audit trail on a real `apex serve` and PostgreSQL: security-relevant events land in
the organisation's trail in order, with who and what, readable by its owners only and
filterable; the database refuses to change or delete a record."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.harness import ApexServer, PostgresCluster, RedisServer
from tests.harness.payments import PaymentsServer
from tests.harness.procs import HarnessError, wait_until
from tests.integration.critical.conftest import database_name, signup, signup_body

PASSWORD = signup_body()["password"]
AUDIT = "/api/v1/audit"
KEYS = "/api/v1/organizations/current/api-keys"
INVITATIONS = "/api/v1/organizations/current/invitations"


def test_audit_trail_records_what_changed_and_cannot_be_rewritten(
    postgres: PostgresCluster,
    database_url: str,
    redis_server: RedisServer,
    start_apex: Callable[..., ApexServer],
    start_worker: Callable[..., Any],
    payments: PaymentsServer,
) -> None:
    server = start_apex(database_url, redis_server.url, **payments.apex_settings())
    start_worker(database_url, redis_server.url, **payments.apex_settings())
    payments.send_webhooks_to(server.base_url + "/api/v1/billing/webhooks/stripe")
    client = server.client(timeout=30)
    account = signup(client).json()
    owner_id = account["user_id"]
    email = client.get("/api/v1/users/me", headers=bearer_of(account)).json()["email"]

    wrong = client.post("/api/v1/auth/token", json={"email": email, "password": "not it"})
    assert wrong.status_code == 401
    nobody = client.post("/api/v1/auth/token",
                         json={"email": "nobody@example.test", "password": "x" * 12})  # fmt: skip
    assert nobody.status_code == 401
    login = client.post("/api/v1/auth/token", json={"email": email, "password": PASSWORD})
    auth = {"Authorization": f"Bearer {login.json()['access_token']}"}
    checkout = client.post("/api/v1/billing/checkout", headers=auth, json={"tier": "early"})
    assert payments.pay_checkout(checkout.json()["url"]).status_code == 303

    def trail(**query: str) -> list[dict[str, Any]]:
        answer = client.get(AUDIT, headers=auth, params=query)
        assert answer.status_code == 200, answer.text
        rows: list[dict[str, Any]] = answer.json()
        return rows

    assert wait_until(lambda: any(r["action"] == "payment.succeeded" for r in trail()), 30)
    invited = client.post(INVITATIONS, headers=auth, json={"email": "new@example.test"})
    assert invited.status_code == 201, invited.text
    assert client.delete(f"{INVITATIONS}/{invited.json()['id']}", headers=auth).status_code == 204
    key = client.post(KEYS, headers=auth, json={"name": "ci", "permissions": ["usage:write"]})
    assert key.status_code == 201, key.text
    as_key = {"Authorization": f"Bearer {key.json()['key']}"}
    for n in range(3):  # used three times within the hour: its use is recorded once
        record = {"id": f"k{n}", "timestamp": "2026-11-20T10:00:00Z", "provider": "openai",
                  "model": "gpt-4o", "input_tokens": 10}  # fmt: skip
        sent = client.post("/api/v1/usage/events", headers=as_key, json={"records": [record]})
        assert sent.status_code == 200, sent.text
    assert client.delete(f"{KEYS}/{key.json()['id']}", headers=auth).status_code == 204
    assert [(r["action"], r["actor_id"]) for r in trail()] == [
        ("auth.login_failed", owner_id),
        ("auth.login", owner_id),
        ("subscription.subscribed", None),  # the gateway's webhook did it
        ("payment.succeeded", None),  # the worker's collection did it
        ("invitation.created", owner_id),
        ("invitation.revoked", owner_id),
        ("api_key.created", owner_id),
        ("api_key.used", None),  # the key acted, not a person
        ("api_key.revoked", owner_id),
    ]
    (created,) = trail(action="api_key.created")
    assert (created["target_id"], created["details"]) == (
        key.json()["id"], {"name": "ci", "permissions": ["usage:write"]},
    )  # fmt: skip
    assert created["request_id"]  # joinable to the request's log lines
    assert key.json()["key"] not in str(trail())  # never the secret
    assert [r["action"] for r in trail(action="api_key.")] == [
        "api_key.created", "api_key.used", "api_key.revoked"]  # fmt: skip
    (used,) = trail(action="api_key.used")
    first_use = {"name": "ci", "first_use": True}
    assert (used["target_id"], used["details"]) == (key.json()["id"], first_use)
    (paid,) = trail(action="payment.succeeded")
    assert (paid["details"]["amount_usd"], paid["details"]["number"]) == ("99.00", 1)
    # A sign-in to an address with no account is the installation's, not this trail's.
    assert "nobody" not in str(trail())

    # Another organisation's owner sees only their own trail.
    other = bearer_of(signup(client).json())
    assert all(r["action"] != "invitation.created" for r in client.get(AUDIT, headers=other).json())

    database = database_name(database_url)
    for statement in ("UPDATE audit_records SET action = 'x'", "DELETE FROM audit_records",
                      "TRUNCATE audit_records"):  # fmt: skip
        with pytest.raises(HarnessError, match="never changed or deleted"):
            postgres.sql(statement, database)
    assert int(postgres.sql("SELECT count(*) FROM audit_records", database)) >= 8
    client.close()


def bearer_of(account: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {account['access_token']}"}


def test_an_action_filter_postgresql_cannot_store_is_refused_naming_the_field(
    database_url: str, redis_server: RedisServer, start_apex: Callable[..., ApexServer]
) -> None:
    """A NUL in `action` (PostgreSQL text cannot hold one) answers 422 naming `action`, not
    a 500 from the driver; found by the OpenAPI fuzz test."""
    server = start_apex(database_url, redis_server.url)
    client = server.client()
    headers = bearer_of(signup(client).json())
    answer = client.get("/api/v1/audit", params={"action": "auth.\x00"}, headers=headers)
    assert answer.status_code == 422, answer.text
    assert [e["field"] for e in answer.json()["errors"]] == ["action"]
    assert (
        client.get("/api/v1/audit", params={"action": "auth."}, headers=headers).status_code == 200
    )
