"""Tier 2, identity: OpenID Connect login, tokens, browser sessions, RBAC and tenant
isolation, across real `apex serve` instances and a local OpenID Connect provider."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import httpx
import jwt
import redis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.routing import APIRoute

from apex.app import create_app
from apex.identity.endpoints import API_KEYS, INVITATIONS, MEMBERS
from apex.settings import Settings
from tests.harness import ApexServer, ApexWorker, PostgresCluster, RedisServer
from tests.harness.oidc import OidcProvider
from tests.harness.payments import PaymentsServer
from tests.harness.procs import wait_until
from tests.integration.conftest import SECRET
from tests.integration.critical.conftest import (
    database_name,
    signup,
    signup_body,
)
from tests.integration.critical.conftest import join as join_organization


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _me(client: httpx.Client, token: str) -> httpx.Response:
    return client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {token}"})


def _kid(token: str) -> str:
    return str(jwt.get_unverified_header(token)["kid"])


def _login(client: httpx.Client, email: str, organization_id: str | None = None) -> dict[str, Any]:
    response = client.post(
        "/api/v1/auth/token",
        json={
            "email": email,
            "password": "correct horse battery staple",
            "organization_id": organization_id,
        },
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _server_key(postgres: PostgresCluster, db: str, kid: str) -> Any:
    """The server's own private key, decrypted with its secret: lets the matrix below forge
    tokens that differ from a genuine one in exactly one claim."""
    pem = postgres.sql(f"SELECT private_key_pem FROM signing_keys WHERE kid = '{kid}'", db)  # noqa: S608
    return serialization.load_pem_private_key(pem.encode(), SECRET.encode())


def test_jwt_lifecycle_management_integration(
    postgres: PostgresCluster,
    database_url: str,
    fresh_redis: RedisServer,
    start_apex: Callable[..., ApexServer],
) -> None:
    db = database_name(database_url)
    settings = {
        "access_token_ttl_seconds": "60",
        "token_leeway_seconds": "0",
        # Long enough that a loaded machine still checks the old key inside the overlap.
        "signing_key_overlap_seconds": "10",
        "signing_keys_refresh_seconds": "0.3",
    }
    a = start_apex(database_url, fresh_redis.url, **settings)
    b = start_apex(database_url, fresh_redis.url, **settings)
    short = start_apex(
        database_url, fresh_redis.url, **{**settings, "access_token_ttl_seconds": "5"}
    )
    ca, cb, cs = a.client(), b.client(), short.client()

    # Issue and use, on both instances.
    created = signup(ca)
    assert created.status_code == 201
    pair = created.json()
    email = _me(ca, pair["access_token"]).json()["email"]
    assert _me(cb, pair["access_token"]).status_code == 200

    # Expiry: a 5-second token stops working once it is past `exp` (waited for by its own
    # claim, so a slow machine only waits longer).
    brief = _login(cs, email)
    assert _me(ca, brief["access_token"]).status_code == 200
    expires_at = jwt.decode(brief["access_token"], options={"verify_signature": False})["exp"]
    time.sleep(max(0.0, expires_at + 1.1 - time.time()))  # `exp` is whole seconds
    expired = _me(ca, brief["access_token"])
    assert expired.status_code == 401
    assert expired.json() == {"error": "Unauthorized", "detail": "The access token has expired.",
                              "request_id": expired.headers["x-request-id"],
                              "trace_id": expired.headers["x-trace-id"]}  # fmt: skip

    # Refresh rotates; presenting the old refresh token again revokes the whole family.
    renewed = cb.post("/api/v1/auth/refresh", json={"refresh_token": brief["refresh_token"]})
    assert renewed.status_code == 200
    assert _me(ca, renewed.json()["access_token"]).status_code == 200
    reused = ca.post("/api/v1/auth/refresh", json={"refresh_token": brief["refresh_token"]})
    assert reused.status_code == 401
    assert "already used" in reused.json()["detail"]
    after_reuse = cb.post(
        "/api/v1/auth/refresh", json={"refresh_token": renewed.json()["refresh_token"]}
    )
    assert after_reuse.status_code == 401
    family = postgres.sql(
        "SELECT count(*), count(revoked_at) FROM refresh_tokens WHERE family_id ="
        " (SELECT family_id FROM refresh_tokens WHERE used_at IS NOT NULL LIMIT 1)",
        db,
    )
    assert family == "2|2"

    # Logout on A: B refuses the token (measured: within milliseconds; the bound is loose
    # for loaded machines); its refresh token is dead too.
    session = _login(ca, email)
    assert _me(cb, session["access_token"]).status_code == 200
    out = ca.post(
        "/api/v1/auth/logout", headers={"Authorization": f"Bearer {session['access_token']}"}
    )
    assert out.status_code == 204
    logged_out_at = time.perf_counter()
    assert wait_until(lambda: _me(cb, session["access_token"]).status_code == 401, 30)
    honoured_ms = (time.perf_counter() - logged_out_at) * 1000
    print(f"\njwt: logout honoured by the other instance after {honoured_ms:.1f} ms")
    assert (
        _me(cb, session["access_token"]).json()["detail"]
        == "This access token was revoked (logged out)."
    )
    assert (
        cb.post(
            "/api/v1/auth/refresh", json={"refresh_token": session["refresh_token"]}
        ).status_code
        == 401
    )

    # Key rotation: old tokens stay valid during the overlap, not after.
    before = _login(ca, email)["access_token"]
    old_kid = _kid(before)
    env = {k: v for k, v in os.environ.items() if not k.startswith("APEX_")}
    env |= {"APEX_DATABASE_URL": database_url, "APEX_SECRET_KEY": SECRET}
    rotated = subprocess.run(
        [sys.executable, "-m", "apex", "keys", "rotate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert rotated.returncode == 0, rotated.stderr
    assert wait_until(lambda: _kid(_login(cb, email)["access_token"]) != old_kid, 10)
    new_kid = _kid(_login(ca, email)["access_token"])
    assert {k["kid"] for k in ca.get("/.well-known/jwks.json").json()["keys"]} == {old_kid, new_kid}
    assert _me(ca, before).status_code == 200
    assert _me(cb, before).status_code == 200
    assert wait_until(
        lambda: _me(ca, before).status_code == 401 and _me(cb, before).status_code == 401, 30
    )
    assert _me(ca, before).json()["detail"] == "Access token signed by an unknown key."
    assert {k["kid"] for k in cb.get("/.well-known/jwks.json").json()["keys"]} == {new_kid}

    # The forgery matrix: every one is a 401, and none returns the user's data.
    genuine = _login(ca, email)["access_token"]
    assert _me(ca, genuine).status_code == 200
    for name, token in _forgeries(
        genuine, _server_key(postgres, db, _kid(genuine)), session["refresh_token"]
    ).items():
        response = _me(ca, token)
        assert response.status_code == 401, name
        assert response.json()["error"] == "Unauthorized", name
        assert email not in response.text, name
    for client in (ca, cb, cs):
        client.close()


def _forgeries(genuine: str, server_key: Any, refresh_token: str) -> dict[str, str]:
    header = jwt.get_unverified_header(genuine)
    claims = json.loads(_unb64(genuine.split(".")[1]))
    kid = header["kid"]
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = server_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    now = datetime.now(UTC)

    def signed(changes: dict[str, Any], *, key: Any = server_key, **headers: Any) -> str:
        return jwt.encode(
            {**claims, **changes}, key, algorithm="RS256", headers={"kid": kid, **headers}
        )

    def hs256_with_public_key() -> str:
        head = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
        body = _b64(json.dumps(claims).encode())
        mac = hmac.new(public_pem, f"{head}.{body}".encode(), hashlib.sha256).digest()
        return f"{head}.{body}.{_b64(mac)}"

    def alg_none() -> str:
        head = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": kid}).encode())
        return f"{head}.{_b64(json.dumps(claims).encode())}."

    def tampered() -> str:
        head, _, signature = genuine.split(".")
        body = _b64(json.dumps({**claims, "org": "00000000-0000-7000-8000-000000000000"}).encode())
        return f"{head}.{body}.{signature}"

    return {
        "alg none": alg_none(),
        "HS256 signed with the public key": hs256_with_public_key(),
        "unknown kid": jwt.encode(
            claims, attacker, algorithm="RS256", headers={"kid": "not-a-key"}
        ),
        "kid with a path": jwt.encode(
            claims, attacker, algorithm="RS256", headers={"kid": "../../../../dev/null"}
        ),
        "kid with SQL": jwt.encode(
            claims, attacker, algorithm="RS256", headers={"kid": "x' OR '1'='1"}
        ),
        "foreign jku": signed({}, key=attacker, jku="http://127.0.0.1:9/jwks.json"),
        "jku with the server's own key": signed({}, jku="http://127.0.0.1:9/jwks.json"),
        "expired": signed({"exp": int((now - timedelta(minutes=5)).timestamp())}),
        "nbf in the future": signed({"nbf": int((now + timedelta(minutes=5)).timestamp())}),
        # Validly signed, malformed claims: a 401, never a server error.
        "exp far beyond any date": signed({"exp": 10**20}),
        "exp a string": signed({"exp": "tomorrow"}),
        "exp a boolean": signed({"exp": True}),
        "nbf negative": signed({"nbf": -(10**12)}),
        "sub not a UUID": signed({"sub": "root"}),
        "wrong iss": signed({"iss": "https://evil.example"}),
        "wrong aud": signed({"aud": "another-api"}),
        "ID token": signed({"typ": "id", "aud": "apex-web"}),
        "refresh token": refresh_token,
        "tampered payload": tampered(),
        "garbage": "not.a.jwt",
    }


# --- RBAC ---------------------------------------------------------------------------------
def _permission_of(dependant: Any) -> str | None:
    for sub in dependant.dependencies:
        found = getattr(sub.call, "permission", None) or _permission_of(sub)
        if found:
            return str(found)
    return None


def _api_routes(routes: list[Any]) -> list[APIRoute]:
    """Every APIRoute, looking inside included routers (their paths carry their prefix)."""
    found: list[APIRoute] = []
    for route in routes:
        if isinstance(route, APIRoute):
            found.append(route)
        elif getattr(route, "original_router", None) is not None:
            found.extend(_api_routes(route.original_router.routes))
    return found


def _protected_routes() -> list[tuple[str, str, str]]:
    """(method, path, permission) of every route that declares RequirePermission(...)."""
    app = create_app(Settings(environment="test"))
    protected: list[tuple[str, str, str]] = []
    for route in _api_routes(list(app.routes)):
        permission = _permission_of(route.dependant)
        if permission:
            protected.extend(
                (method, route.path, permission) for method in sorted(route.methods or ())
            )
    return protected


ROLES = ("owner", "admin", "member", "viewer")
PASSWORD = signup_body()["password"]
RUNS = "/api/v1/agents/runs"

# Who may call each protected route, written out by hand from the product's rules (BRIEF,
# docs/security.md) — not computed with the policy code under test.
EVERYONE = frozenset(ROLES)
WRITERS = frozenset({"owner", "admin", "member"})
MANAGERS = frozenset({"owner", "admin"})
OWNER = frozenset({"owner"})
BILLING = "/api/v1/billing"
FINDINGS = "/api/v1/findings"
ALERTS = "/api/v1/alerts"
_ORG = "/api/v1/organizations/current"
EXPECTED_ACCESS: dict[tuple[str, str], frozenset[str]] = {
    ("GET", _ORG): EVERYONE,
    ("PATCH", _ORG): MANAGERS,
    ("GET", f"{_ORG}/members"): EVERYONE,
    ("PATCH", f"{_ORG}/members/{{user_id}}"): MANAGERS,
    ("DELETE", f"{_ORG}/members/{{user_id}}"): MANAGERS,
    ("GET", f"{_ORG}/invitations"): EVERYONE,
    ("POST", f"{_ORG}/invitations"): MANAGERS,
    ("DELETE", f"{_ORG}/invitations/{{invitation_id}}"): MANAGERS,
    ("GET", f"{_ORG}/api-keys"): EVERYONE,
    ("POST", f"{_ORG}/api-keys"): MANAGERS,
    ("DELETE", f"{_ORG}/api-keys/{{key_id}}"): MANAGERS,
    ("POST", "/api/v1/usage/events"): WRITERS,
    ("GET", "/api/v1/usage/events/{record_id}"): EVERYONE,
    ("GET", "/api/v1/usage/meter"): EVERYONE,
    ("GET", "/api/v1/usage/spend"): EVERYONE,
    ("POST", "/api/v1/usage/events:import"): WRITERS,
    ("GET", "/api/v1/usage/imports"): EVERYONE,
    ("GET", "/api/v1/usage/imports/{import_id}"): EVERYONE,
    ("GET", "/api/v1/usage/imports/{import_id}/problems"): EVERYONE,
    ("GET", "/api/v1/pricing"): EVERYONE,
    ("PUT", "/api/v1/pricing/{provider}/{model}"): MANAGERS,
    ("DELETE", "/api/v1/pricing/{provider}/{model}"): MANAGERS,
    ("POST", RUNS): WRITERS,
    ("GET", RUNS): EVERYONE,
    ("GET", RUNS + "/{run_id}"): EVERYONE,
    ("GET", RUNS + "/{run_id}/report"): EVERYONE,
    ("GET", RUNS + "/{run_id}/events"): EVERYONE,
    ("POST", RUNS + "/{run_id}/cancel"): WRITERS,
    ("GET", "/api/v1/threads"): EVERYONE,
    ("GET", "/api/v1/threads/{thread_id}/messages"): EVERYONE,
    ("GET", FINDINGS): EVERYONE,
    ("GET", FINDINGS + "/{finding_id}"): EVERYONE,
    # Adopting a finding makes its verified saving billable: managers decide.
    ("POST", FINDINGS + "/{finding_id}/adopt"): MANAGERS,
    ("POST", FINDINGS + "/{finding_id}/dismiss"): MANAGERS,
    ("GET", "/api/v1/audit"): OWNER,
    # Alert rules decide who is told what, and where: managers set them, everyone reads.
    ("GET", ALERTS + "/rules"): EVERYONE,
    ("POST", ALERTS + "/rules"): MANAGERS,
    ("GET", ALERTS + "/rules/{rule_id}"): EVERYONE,
    ("PATCH", ALERTS + "/rules/{rule_id}"): MANAGERS,
    ("DELETE", ALERTS + "/rules/{rule_id}"): MANAGERS,
    ("GET", ALERTS + "/events"): EVERYONE,
    ("GET", ALERTS + "/events/{event_id}/deliveries"): EVERYONE,
    ("GET", "/api/v1/telemetry"): EVERYONE,
    # Billing is the owner's alone (it spends the organisation's money).
    ("GET", f"{BILLING}/subscription"): OWNER,
    ("GET", f"{BILLING}/subscription/events"): OWNER,
    ("GET", f"{BILLING}/invoices"): OWNER,
    ("GET", f"{BILLING}/invoices/{{invoice_id}}"): OWNER,
    ("GET", f"{BILLING}/invoices/{{invoice_id}}/html"): OWNER,
    ("POST", f"{BILLING}/invoices/{{invoice_id}}/pay"): OWNER,
    ("POST", f"{BILLING}/checkout"): OWNER,
    ("POST", f"{BILLING}/subscription/change"): OWNER,
    ("POST", f"{BILLING}/subscription/cancel"): OWNER,
    ("POST", f"{BILLING}/subscription/reactivate"): OWNER,
    ("POST", f"{BILLING}/trial"): OWNER,
}


def test_rbac_enforcement_integration(
    postgres: PostgresCluster,
    database_url: str,
    fresh_redis: RedisServer,
    start_apex: Callable[..., ApexServer],
    start_worker: Callable[..., ApexWorker],
    payments: PaymentsServer,
) -> None:
    a = start_apex(database_url, fresh_redis.url, **payments.apex_settings())
    b = start_apex(database_url, fresh_redis.url, **payments.apex_settings())
    payments.send_webhooks_to(a.base_url + f"{BILLING}/webhooks/stripe")
    ca, cb = a.client(), b.client()
    owner = signup(ca).json()
    as_owner = {"Authorization": f"Bearer {owner['access_token']}"}
    # Enterprise allows 20 concurrent agent runs: enough for every sample run below. It is
    # bought as a customer buys it (its first invoice is then there to read).
    bought = ca.post(f"{BILLING}/checkout", headers=as_owner, json={"tier": "enterprise"})
    assert bought.status_code == 200, bought.text
    assert payments.pay_checkout(bought.json()["url"]).status_code == 303
    assert wait_until(
        lambda: ca.get(f"{BILLING}/invoices", headers=as_owner).json() != [], timeout=30
    )
    invoice_id = ca.get(f"{BILLING}/invoices", headers=as_owner).json()[0]["id"]
    assert ca.get("/api/v1/organizations/current", headers=as_owner).json()["tier"] == "enterprise"

    def new_run() -> str:
        made = ca.post(RUNS, headers=as_owner, json={"question": "Where can we save?"})
        assert made.status_code == 202, made.text
        return str(made.json()["id"])

    # One finished run to read, whose findings (short calls of nine workloads on gpt-4o, each
    # worth moving to a smaller model) are read, adopted and dismissed below (a sample per
    # role); then no worker, so later runs stay queued (cancellable).
    yesterday = datetime.now(UTC) - timedelta(days=1)
    short_calls = [{"id": f"rbac-{workload}-{i}", "provider": "openai", "model": "gpt-4o",
                    "timestamp": (yesterday + timedelta(minutes=i)).isoformat(),
                    "workload": workload, "input_tokens": 500, "output_tokens": 20}
                   for workload in "abcdefghi" for i in range(60)]  # fmt: skip
    sent = ca.post("/api/v1/usage/events", headers=as_owner, json={"records": short_calls})
    assert sent.json()["accepted"] == len(short_calls), sent.text
    worker = start_worker(database_url, fresh_redis.url, alert_evaluation_seconds="0.5")
    finished = new_run()

    # A rule that fires at once (any spend in the last week), for its event's delivery log.
    def new_rule() -> str:
        made = ca.post(f"{ALERTS}/rules", headers=as_owner, json={
            "name": "any spend", "kind": "spend", "threshold": "0.000001",
            "window_minutes": 10080, "channels": [{"type": "email", "to": "ops@example.test"}],
        })  # fmt: skip
        assert made.status_code == 201, made.text
        return str(made.json()["id"])

    alert_rule = new_rule()
    assert wait_until(
        lambda: (
            ca.get(f"{RUNS}/{finished}", headers=as_owner).json()["status"] == "succeeded"
            and ca.get(f"{ALERTS}/events", headers=as_owner).json() != []
        ),
        timeout=60,
    )
    alert_event = ca.get(f"{ALERTS}/events", headers=as_owner).json()[0]["id"]
    worker.stop()
    finished_thread = ca.get(f"{RUNS}/{finished}", headers=as_owner).json()["thread_id"]
    findings = [f["id"] for f in ca.get(FINDINGS, headers=as_owner).json()]
    unused = iter(findings[1:])  # the first is only read; each of the others is acted on once
    assert len(findings) >= 9, findings

    def join(role: str) -> tuple[str, dict[str, str]]:
        """A new account that accepted the owner's invitation with `role`; its id and the
        headers of a token acting for the owner's organisation."""
        account = join_organization(ca, as_owner, role)
        token = _login(ca, account["email"], owner["organization_id"])["access_token"]
        return account["user_id"], {"Authorization": f"Bearer {token}"}

    def new_invitation() -> str:
        made = ca.post(f"/api/v1{INVITATIONS}", headers=as_owner, json={"email": "x@example.test"})
        assert made.status_code == 201, made.text
        return str(made.json()["id"])

    def new_key() -> str:
        created = ca.post(
            f"/api/v1{API_KEYS}", headers=as_owner, json={"name": "k", "permissions": ["org:read"]}
        )
        assert created.status_code == 201, created.text
        return str(created.json()["id"])

    def new_override() -> str:
        model = f"m-{uuid.uuid4().hex[:8]}"
        made = ca.put(
            f"/api/v1/pricing/acme/{model}", headers=as_owner, json={"input": "1", "output": "1"}
        )
        assert made.status_code == 200, made.text
        return model

    stored = ca.post(
        "/api/v1/usage/events",
        headers=as_owner,
        json={"records": [{"id": "rbac-1", "timestamp": "2026-11-01T00:00:00Z",
                           "provider": "openai", "model": "gpt-4o", "input_tokens": 10}]},
    )  # fmt: skip
    assert stored.json()["accepted"] == 1, stored.text

    headers = {"owner": as_owner}
    for role in ROLES[1:]:
        headers[role] = join(role)[1]

    # Requests for each protected route; a route without a sample fails the test, so a new
    # endpoint cannot go unchecked.
    def ndjson_record() -> bytes:
        return json.dumps({"id": uuid.uuid4().hex, "timestamp": "2026-11-01T00:00:00Z",
                           "provider": "openai", "model": "gpt-4o"}).encode()  # fmt: skip

    def an_import() -> str:
        made = ca.post("/api/v1/usage/events:import", content=ndjson_record(),
                       headers={**as_owner, "Content-Type": "application/x-ndjson"})  # fmt: skip
        assert made.status_code == 200, made.text
        return str(made.json()["id"])

    Sample = tuple[dict[str, Any] | bytes | None, str]

    def without_subscription(path: str) -> Sample:
        """A trial is for an organisation without a subscription: the owner's is removed."""
        postgres.sql("DELETE FROM subscriptions", database_name(database_url))
        return None, path

    def sample(method: str, path: str) -> Callable[[], Sample]:
        samples: dict[tuple[str, str], Callable[[], Sample]] = {
            ("GET", "/api/v1/organizations/current"): lambda: (None, path),
            ("PATCH", "/api/v1/organizations/current"): lambda: ({"name": "Renamed"}, path),
            ("GET", f"/api/v1{MEMBERS}"): lambda: (None, path),
            ("PATCH", f"/api/v1{MEMBERS}/{{user_id}}"): lambda: (
                {"role": "member"},
                path.replace("{user_id}", join("viewer")[0]),
            ),
            ("DELETE", f"/api/v1{MEMBERS}/{{user_id}}"): lambda: (
                None,
                path.replace("{user_id}", join("viewer")[0]),
            ),
            ("GET", f"/api/v1{INVITATIONS}"): lambda: (None, path),
            ("POST", f"/api/v1{INVITATIONS}"): lambda: (
                {"email": "invitee@example.test", "role": "viewer"},
                path,
            ),
            ("DELETE", f"/api/v1{INVITATIONS}/{{invitation_id}}"): lambda: (
                None,
                path.replace("{invitation_id}", new_invitation()),
            ),
            ("GET", f"/api/v1{API_KEYS}"): lambda: (None, path),
            ("POST", f"/api/v1{API_KEYS}"): lambda: (
                {"name": "ci", "permissions": ["org:read"]},
                path,
            ),
            ("DELETE", f"/api/v1{API_KEYS}/{{key_id}}"): lambda: (
                None,
                path.replace("{key_id}", new_key()),
            ),
            ("POST", "/api/v1/usage/events"): lambda: (
                {
                    "records": [
                        {
                            "id": uuid.uuid4().hex,
                            "timestamp": "2026-11-01T00:00:00Z",
                            "provider": "openai",
                            "model": "gpt-4o",
                            "input_tokens": 10,
                        }
                    ]
                },
                path,
            ),
            ("GET", "/api/v1/pricing"): lambda: (None, path),
            ("GET", "/api/v1/usage/meter"): lambda: (None, path),
            ("GET", "/api/v1/usage/spend"): lambda: (None, path),
            ("POST", "/api/v1/usage/events:import"): lambda: (ndjson_record(), path),
            ("GET", "/api/v1/usage/imports"): lambda: (None, path),
            ("GET", "/api/v1/usage/imports/{import_id}"): lambda: (
                None,
                path.replace("{import_id}", an_import()),
            ),
            ("GET", "/api/v1/usage/imports/{import_id}/problems"): lambda: (
                None,
                path.replace("{import_id}", an_import()),
            ),
            ("GET", "/api/v1/usage/events/{record_id}"): lambda: (
                None,
                path.replace("{record_id}", "rbac-1"),
            ),
            ("POST", RUNS): lambda: ({"question": "Where can we save?"}, path),
            ("GET", RUNS): lambda: (None, path),
            ("GET", RUNS + "/{run_id}"): lambda: (None, path.replace("{run_id}", finished)),
            ("GET", RUNS + "/{run_id}/report"): lambda: (
                None,
                path.replace("{run_id}", finished),
            ),
            ("GET", RUNS + "/{run_id}/events"): lambda: (
                None,
                path.replace("{run_id}", finished),
            ),
            ("POST", RUNS + "/{run_id}/cancel"): lambda: (
                None,
                path.replace("{run_id}", new_run()),
            ),
            ("PUT", "/api/v1/pricing/{provider}/{model}"): lambda: (
                {"input": "1", "output": "2"},
                "/api/v1/pricing/acme/m1",
            ),
            ("DELETE", "/api/v1/pricing/{provider}/{model}"): lambda: (
                None,
                "/api/v1/pricing/acme/" + new_override(),
            ),
            ("GET", "/api/v1/threads"): lambda: (None, path),
            ("GET", "/api/v1/threads/{thread_id}/messages"): lambda: (
                None,
                path.replace("{thread_id}", finished_thread),
            ),
            ("GET", "/api/v1/audit"): lambda: (None, path),
            ("GET", ALERTS + "/rules"): lambda: (None, path),
            ("POST", ALERTS + "/rules"): lambda: (
                {
                    "name": "errors",
                    "kind": "error_rate",
                    "threshold": "5",
                    "channels": [{"type": "email", "to": "ops@example.test"}],
                },
                path,
            ),
            ("GET", ALERTS + "/rules/{rule_id}"): lambda: (
                None,
                path.replace("{rule_id}", alert_rule),
            ),
            ("PATCH", ALERTS + "/rules/{rule_id}"): lambda: (
                {"name": "renamed"},
                path.replace("{rule_id}", alert_rule),
            ),
            ("DELETE", ALERTS + "/rules/{rule_id}"): lambda: (
                None,
                path.replace("{rule_id}", new_rule()),
            ),
            ("GET", ALERTS + "/events"): lambda: (None, path),
            ("GET", "/api/v1/telemetry"): lambda: (None, path),
            ("GET", ALERTS + "/events/{event_id}/deliveries"): lambda: (
                None,
                path.replace("{event_id}", alert_event),
            ),
            ("GET", FINDINGS): lambda: (None, path),
            ("GET", FINDINGS + "/{finding_id}"): lambda: (
                None,
                path.replace("{finding_id}", findings[0]),
            ),
            ("POST", FINDINGS + "/{finding_id}/adopt"): lambda: (
                None,
                path.replace("{finding_id}", next(unused)),
            ),
            ("POST", FINDINGS + "/{finding_id}/dismiss"): lambda: (
                {"reason": "not now"},
                path.replace("{finding_id}", next(unused)),
            ),
            ("GET", f"{BILLING}/subscription"): lambda: (None, path),
            ("GET", f"{BILLING}/subscription/events"): lambda: (None, path),
            ("GET", f"{BILLING}/invoices"): lambda: (None, path),
            ("GET", f"{BILLING}/invoices/{{invoice_id}}"): lambda: (
                None,
                path.replace("{invoice_id}", invoice_id),
            ),
            ("GET", f"{BILLING}/invoices/{{invoice_id}}/html"): lambda: (
                None,
                path.replace("{invoice_id}", invoice_id),
            ),
            ("POST", f"{BILLING}/invoices/{{invoice_id}}/pay"): lambda: (
                None,
                path.replace("{invoice_id}", invoice_id),
            ),
            ("POST", f"{BILLING}/checkout"): lambda: ({"tier": "enterprise"}, path),
            ("POST", f"{BILLING}/subscription/change"): lambda: ({"tier": "enterprise"}, path),
            ("POST", f"{BILLING}/subscription/cancel"): lambda: (None, path),
            ("POST", f"{BILLING}/subscription/reactivate"): lambda: (None, path),
            ("POST", f"{BILLING}/trial"): lambda: without_subscription(path),
        }
        assert (method, path) in samples, f"add a sample request for {method} {path}"
        return samples[(method, path)]

    # Exactly these routes declare a permission: a new one, or one that lost its check, fails.
    declared = {(method, path) for method, path, _ in _protected_routes()}
    assert declared == set(EXPECTED_ACCESS)
    observed, expected = {}, {}
    # Billing last: its samples change the plan the other samples rely on.
    in_order = sorted(EXPECTED_ACCESS.items(), key=lambda i: (i[0][1].startswith(BILLING), i[0]))
    for (method, path), allowed in in_order:
        for role in ROLES:
            body, url = sample(method, path)()
            if isinstance(body, bytes):  # a streamed upload
                ndjson = {**headers[role], "Content-Type": "application/x-ndjson"}
                response = ca.request(method, url, headers=ndjson, content=body)
            else:
                response = ca.request(method, url, headers=headers[role], json=body)
            observed[(method, path, role)] = response.status_code != 403
            expected[(method, path, role)] = role in allowed
            if response.status_code != 403:
                assert response.status_code < 400, (method, path, role, response.text)
    assert observed == expected
    cases = f"{len(EXPECTED_ACCESS)} protected routes x {len(ROLES)} roles = {len(observed)}"
    print(f"\nrbac: {cases} cases match the matrix written out in the test")
    # The trial sample left the organisation trialing Early: back on Enterprise, bought again.
    rebought = ca.post(f"{BILLING}/checkout", headers=as_owner, json={"tier": "enterprise"})
    assert rebought.status_code == 200, rebought.text
    assert payments.pay_checkout(rebought.json()["url"]).status_code == 303
    assert wait_until(
        lambda: ca.get(f"{BILLING}/subscription", headers=as_owner).json()["tier"] == "enterprise",
        timeout=30,
    )

    # A role change takes effect on the very next request, on the other instance too.
    member_id, as_member = join("member")
    assert (
        cb.patch("/api/v1/organizations/current", headers=as_member, json={"name": "x"}).status_code
        == 403
    )
    promoted = ca.patch(f"/api/v1{MEMBERS}/{member_id}", headers=as_owner, json={"role": "admin"})
    assert promoted.status_code == 200
    assert (
        cb.patch("/api/v1/organizations/current", headers=as_member, json={"name": "y"}).status_code
        == 200
    )
    demoted = ca.patch(f"/api/v1{MEMBERS}/{member_id}", headers=as_owner, json={"role": "viewer"})
    assert demoted.status_code == 200
    assert (
        cb.patch("/api/v1/organizations/current", headers=as_member, json={"name": "z"}).status_code
        == 403
    )

    # The last owner can be neither demoted nor removed; admins cannot touch owners.
    me = owner["user_id"]
    last = ca.patch(f"/api/v1{MEMBERS}/{me}", headers=as_owner, json={"role": "admin"})
    assert last.status_code == 409
    assert "at least one owner" in last.json()["detail"]
    assert ca.delete(f"/api/v1{MEMBERS}/{me}", headers=as_owner).status_code == 409
    assert ca.delete(f"/api/v1{MEMBERS}/{me}", headers=headers["admin"]).status_code == 403
    roles = {
        m["role"]
        for m in ca.get(f"/api/v1{MEMBERS}", headers=as_owner).json()
        if m["user_id"] == me
    }
    assert roles == {"owner"}
    ca.close()
    cb.close()


# --- tenant isolation ---------------------------------------------------------------------
def _example(schema: dict[str, Any], spec: dict[str, Any]) -> Any:
    """A minimal valid value for a JSON schema from the OpenAPI document."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        return _example(spec["components"]["schemas"][name], spec)
    if "anyOf" in schema:
        return _example(schema["anyOf"][0], spec)
    if "enum" in schema:
        return schema["enum"][-1]
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties", {})
        return {key: _example(props[key], spec) for key in schema.get("required", [])}
    if kind == "array":
        return []
    if kind == "integer":
        return 1
    if kind == "boolean":
        return True
    if schema.get("format") == "uuid":
        return "00000000-0000-7000-8000-000000000000"
    if "email" in str(schema.get("pattern", "")) or "@" in str(schema.get("pattern", "")):
        return "someone@example.test"
    return "x" * max(1, int(schema.get("minLength", 1)))


# Tables that hold an organisation's data, for the before/after checksum of tenant A.
TENANT_TABLES = (
    "organizations", "memberships", "api_keys", "invitations", "price_overrides",
    "usage_records", "usage_rollups", "usage_hash_rollups", "usage_hash_totals", "usage_imports",
    "usage_import_problems", "agent_runs", "threads", "subscriptions", "subscription_events",
    "invoices", "payments", "findings", "alert_rules", "alert_events", "alert_deliveries",
    "telemetry_points",
)  # fmt: skip
# Reads that are the same for everyone (the plan catalogue): they must not leak A's data,
# and hold no one's.
SHARED_READS = {"/api/v1/billing/plans", "/api/v1/auth/providers"}
# Reads of the browser session itself: a token (B's here) has none, and is told so.
BROWSER_SESSION_READS = {"/api/v1/auth/session"}


def _properties(schema: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """The properties of a request body's schema, optional ones included."""
    if "$ref" in schema:
        return _properties(spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]], spec)
    properties: dict[str, Any] = schema.get("properties", {})
    return properties


def _checksum(postgres: PostgresCluster, database: str, organization_id: str) -> dict[str, str]:
    """Row count and a hash of every row of the organisation, per table (plus the messages of
    its threads and the steps of its runs)."""

    def rows(table: str, where: str) -> str:
        digest = "coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '')"
        query = f"SELECT count(*) || ':' || {digest} FROM {table} t WHERE {where}"  # noqa: S608
        return postgres.sql(query, database).strip()

    org = f"'{organization_id}'"
    sums = {t: rows(t, f"{'id' if t == 'organizations' else 'organization_id'} = {org}")
            for t in TENANT_TABLES}  # fmt: skip
    threads = f"SELECT id FROM threads WHERE organization_id = {org}"  # noqa: S608
    runs = f"SELECT id FROM agent_runs WHERE organization_id = {org}"  # noqa: S608
    sums["messages"] = rows("messages", f"thread_id IN ({threads})")
    sums["agent_steps"] = rows("agent_steps", f"run_id IN ({runs})")
    return sums


def test_tenant_isolation_integration(
    postgres: PostgresCluster,
    database_url: str,
    fresh_redis: RedisServer,
    start_apex: Callable[..., ApexServer],
    start_worker: Callable[..., ApexWorker],
    payments: PaymentsServer,
) -> None:
    gateway = payments.apex_settings()
    server = start_apex(database_url, fresh_redis.url, session_cookie_secure="false", **gateway)
    # Alerts evaluated every half second; a notice that fails is not retried (so A's rows
    # stay still while B probes them).
    start_worker(database_url, fresh_redis.url, alert_evaluation_seconds="0.5",
                 alert_delivery_attempts="1", **gateway)  # fmt: skip
    payments.send_webhooks_to(server.base_url + f"{BILLING}/webhooks/stripe")
    client = server.client()
    db = database_name(database_url)

    def tenant() -> tuple[dict[str, str], set[str], dict[str, str]]:
        """An organisation with every kind of resource Apex stores: members, an API key, an
        invitation, a price override, usage records with metadata, a finished agent run with
        its report, events, thread and messages and an adopted finding, a browser session, a
        paid subscription with its history, invoice and payment. Its owner's headers, every
        identifier and email that belongs to it, and the ids by kind."""
        owner = signup(client).json()
        auth = {"Authorization": f"Bearer {owner['access_token']}"}
        bought = client.post(f"{BILLING}/checkout", headers=auth, json={"tier": "early"})
        assert payments.pay_checkout(bought.json()["url"]).status_code == 303  # 5 seats

        def paid_invoice() -> list[dict[str, Any]]:
            found: list[dict[str, Any]] = client.get(f"{BILLING}/invoices", headers=auth).json()
            return [invoice for invoice in found if invoice["status"] == "paid"]

        assert wait_until(lambda: paid_invoice() != [], 30)
        extra = join_organization(client, auth, "member")
        extra_email = extra["email"]
        owner_email = _me(client, owner["access_token"]).json()["email"]
        key = client.post(
            f"/api/v1{API_KEYS}",
            headers=auth,
            json={"name": "ingest", "permissions": ["usage:write"]},
        )
        assert key.status_code == 201
        negotiated = f"negotiated-{uuid.uuid4().hex[:8]}"
        price = client.put(
            f"/api/v1/pricing/acme/{negotiated}", headers=auth, json={"input": "1", "output": "1"}
        )
        assert price.status_code == 200
        invitee = {"email": f"invitee-{uuid.uuid4().hex[:6]}@example.test"}
        invitation = client.post(f"/api/v1{INVITATIONS}", headers=auth, json=invitee)
        assert invitation.status_code == 201
        record_id, marker = str(uuid.uuid4()), f"secret-meta-{uuid.uuid4().hex[:8]}"
        usage = client.post("/api/v1/usage/events", headers=auth, json={"records": [
            {"id": record_id, "timestamp": "2026-11-20T10:00:00Z", "provider": "openai",
             "model": "gpt-4o", "input_tokens": 100, "output_tokens": 10,
             "metadata": {"note": marker}, "prompt_hash": marker, "prefix_hash": marker,
             "prefix_tokens": 50},
            {"id": f"{record_id}-again", "timestamp": "2026-11-20T11:00:00Z",
             "provider": "openai", "model": "gpt-4o", "input_tokens": 100, "output_tokens": 10,
             "prompt_hash": marker, "prefix_hash": marker, "prefix_tokens": 50},
        ]})  # fmt: skip
        assert usage.json()["accepted"] == 2, usage.text
        # Short calls on a big model: the run finds them a smaller model (a finding).
        shorts = client.post("/api/v1/usage/events", headers=auth, json={"records": [
            {"id": f"{record_id}-short-{i}", "timestamp": f"2026-11-21T10:{i:02}:00Z",
             "provider": "openai", "model": "gpt-4o", "workload": f"triage-{marker}",
             "input_tokens": 500, "output_tokens": 20} for i in range(60)
        ]})  # fmt: skip
        assert shorts.json()["accepted"] == 60, shorts.text
        upload = b"\n".join([
            json.dumps({"id": f"{record_id}-import", "timestamp": "2026-11-20T12:00:00Z",
                        "provider": "openai", "model": "gpt-4o", "metadata": {"n": marker}}
                       ).encode(),
            json.dumps({"id": f"{marker}-bad", "input_tokens": -1}).encode(),
        ])  # fmt: skip
        ndjson = {**auth, "Content-Type": "application/x-ndjson"}
        imported = client.post("/api/v1/usage/events:import", content=upload, headers=ndjson)
        assert imported.json()["rejected"] == 1, imported.text
        run = client.post(RUNS, headers=auth, json={"question": f"Where? {marker}"})
        assert run.status_code == 202, run.text
        run_id, thread_id = run.json()["id"], run.json()["thread_id"]
        assert wait_until(
            lambda: client.get(f"{RUNS}/{run_id}", headers=auth).json()["status"] == "succeeded",
            60,
        )
        (finding, *_) = client.get(FINDINGS, headers=auth).json()
        adopted = client.post(f"{FINDINGS}/{finding['id']}/adopt", headers=auth)
        assert adopted.status_code == 200, adopted.text
        inbox, hook = f"oncall-{marker}@example.test", f"https://hooks.example.test/{marker}"
        rule = client.post(f"{ALERTS}/rules", headers=auth, json={
            "name": f"spend {marker}", "kind": "spend", "threshold": "0.000001",
            "window_minutes": 10080, "workload": f"triage-{marker}",
            "channels": [{"type": "email", "to": inbox}, {"type": "webhook", "url": hook}],
        })  # fmt: skip
        assert rule.status_code == 201, rule.text

        def notices_settled() -> list[dict[str, Any]]:
            events = client.get(f"{ALERTS}/events", headers=auth).json()
            if not events:
                return []
            log = client.get(f"{ALERTS}/events/{events[0]['id']}/deliveries", headers=auth)
            settled = all(d["status"] != "pending" for d in log.json()) and len(log.json()) == 2
            return events if settled else []

        assert wait_until(lambda: notices_settled() != [], 30)
        alert_event = notices_settled()[0]["id"]
        paused = client.patch(f"{ALERTS}/rules/{rule.json()['id']}", headers=auth,
                              json={"enabled": False})  # fmt: skip
        assert paused.status_code == 200, paused.text
        browser = client.post("/api/v1/auth/session",
                              json={"email": owner_email, "password": PASSWORD})  # fmt: skip
        assert browser.status_code == 200, browser.text
        ids = {
            "organization": owner["organization_id"], "user": owner["user_id"],
            "member": extra["user_id"], "key": key.json()["id"],
            "invitation": invitation.json()["id"], "record": record_id, "run": run_id,
            "thread": thread_id, "session": browser.json()["id"],
            "import": imported.json()["id"], "invoice": paid_invoice()[0]["id"],
            "finding": finding["id"], "alert_rule": rule.json()["id"], "alert_event": alert_event,
        }  # fmt: skip
        secrets_of_tenant = {owner_email, extra_email, key.json()["prefix"], negotiated, marker,
                             inbox, hook, rule.json()["webhook_secret"]}  # fmt: skip
        secrets_of_tenant |= set(ids.values())
        return auth, secrets_of_tenant, ids

    _, a_secrets, a_ids_by_kind = tenant()
    b_auth, b_secrets, _ = tenant()
    a_ids = sorted(a_ids_by_kind.values())
    spec = client.get("/openapi.json").json()
    before = _checksum(postgres, db, a_ids_by_kind["organization"])

    checked_ids, checked_lists, checked_bodies = 0, 0, 0
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if not path.startswith("/api/"):
                continue
            if path.startswith("/api/v1/operator/"):  # the installation's, not a tenant's
                refused = client.request(method.upper(), path, headers=b_auth)
                assert refused.status_code == 403, (path, refused.text)
                continue
            body_schema = (
                operation.get("requestBody", {})
                .get("content", {})
                .get("application/json", {})
                .get("schema")
            )
            body = _example(body_schema, spec) if body_schema else None
            params = [p["name"] for p in operation.get("parameters", []) if p["in"] == "path"]
            if params and not any(name.endswith("_id") for name in params):
                continue  # named by the caller within their own organisation (/pricing/{model})
            if "{" in path:
                for foreign in a_ids:  # every identifier of A, in every id parameter
                    url = path.format(**{name: foreign for name in params})
                    response = client.request(method.upper(), url, headers=b_auth, json=body)
                    # A session's public id is not a UUID: UUID paths refuse it as malformed.
                    refusals = {404} if len(foreign) == 36 else {404, 422}
                    assert response.status_code in refusals, (method, url, response.text)
                    assert not any(secret in response.text for secret in a_secrets), (method, url)
                    checked_ids += 1
            elif method == "get" and path in BROWSER_SESSION_READS:
                response = client.get(path, headers=b_auth)
                assert response.status_code == 401, (path, response.text)
                assert not any(secret in response.text for secret in a_secrets), path
            elif method == "get":
                # Lists, with A's identifiers in the query too (they must change nothing).
                for query in (
                    {},
                    {"after": a_ids_by_kind["run"], "thread_id": a_ids_by_kind["thread"]},
                ):
                    response = client.get(path, headers=b_auth, params=query)
                    assert response.status_code == 200, (path, response.text)
                    assert not any(secret in response.text for secret in a_secrets), path
                    if response.json() != [] and path not in SHARED_READS:
                        assert any(secret in response.text for secret in b_secrets), path
                    checked_lists += 1
            elif body is not None:
                # A's identifiers in every id field of the body.
                for field in [k for k in _properties(body_schema, spec) if k.endswith("_id")]:
                    for foreign in a_ids:
                        response = client.request(method.upper(), path, headers=b_auth,
                                                  json={**body, field: foreign})  # fmt: skip
                        assert response.status_code in (403, 404, 422), (path, field, response.text)
                        assert not any(secret in response.text for secret in a_secrets), path
                        checked_bodies += 1
    # B's run naming A's thread in its body: refused, A's thread untouched.
    hijack = client.post(RUNS, headers=b_auth,
                         json={"question": "x", "thread_id": a_ids_by_kind["thread"]})  # fmt: skip
    assert hijack.status_code == 404
    checked_bodies += 1
    assert _checksum(postgres, db, a_ids_by_kind["organization"]) == before
    print(f"\ntenants: A seeded with {len(a_ids_by_kind)} kinds of resource; {checked_ids} "
          f"foreign-id paths all 404, {checked_bodies} foreign ids in bodies refused, "
          f"{checked_lists} list reads only B's; A's rows unchanged (checksums)")  # fmt: skip
    assert checked_ids >= 2 * len(a_ids)
    assert checked_lists >= 3
    client.close()


# --- browser sessions ----------------------------------------------------------------------
IDLE_S, ABSOLUTE_S = 3, 8


def test_session_security_integration(
    database_url: str,
    fresh_redis: RedisServer,
    start_apex: Callable[..., ApexServer],
) -> None:
    settings = {
        "session_idle_seconds": str(IDLE_S),
        "session_absolute_seconds": str(ABSOLUTE_S),
        "session_cookie_secure": "false",
    }
    a = start_apex(database_url, fresh_redis.url, **settings)
    b = start_apex(database_url, fresh_redis.url, **settings)
    ca, cb = a.client(), b.client()
    account = signup(ca).json()
    email = _me(ca, account["access_token"]).json()["email"]
    browser = "Mozilla/5.0 (X11; Linux x86_64) Apex-Test/1"

    def login(
        client: httpx.Client, agent: str = browser, cookie: str | None = None
    ) -> tuple[str, str]:
        headers = {"User-Agent": agent} | ({"Cookie": f"apex_session={cookie}"} if cookie else {})
        response = client.post(
            "/api/v1/auth/session",
            headers=headers,
            json={"email": email, "password": "correct horse battery staple"},
        )
        assert response.status_code == 200, response.text
        client.cookies.clear()  # each login stands for its own browser; cookies are sent explicitly
        set_cookie = response.headers["set-cookie"]
        assert "HttpOnly" in set_cookie
        assert "SameSite=lax" in set_cookie or "samesite=lax" in set_cookie.lower()
        return response.cookies["apex_session"], response.json()["csrf_token"]

    def me(client: httpx.Client, cookie: str, agent: str = browser) -> httpx.Response:
        return client.get(
            "/api/v1/users/me", headers={"User-Agent": agent, "Cookie": f"apex_session={cookie}"}
        )

    def rename(client: httpx.Client, cookie: str, csrf: str | None) -> httpx.Response:
        headers = {"User-Agent": browser, "Cookie": f"apex_session={cookie}"}
        if csrf is not None:
            headers["X-CSRF-Token"] = csrf
        return client.patch(
            "/api/v1/organizations/current", headers=headers, json={"name": "Via cookie"}
        )

    # A session made on A works on B; its id has at least 128 random bits.
    first, _ = login(ca)
    assert len(first) >= 22
    assert me(cb, first).status_code == 200

    # A pre-login session id is invalid after login: no fixation.
    second, _ = login(ca, cookie=first)
    assert second != first
    assert me(cb, first).status_code == 401
    planted = "attacker-chosen-session-id-0000000000000"
    third, _ = login(cb, cookie=planted)
    assert third != planted
    assert me(ca, planted).status_code == 401

    # A stolen cookie replayed from another browser is refused, and the session revoked.
    stolen = me(cb, second, agent="curl/8.0 (thief)")
    assert stolen.status_code == 401
    assert "another browser" in stolen.json()["detail"]
    assert me(ca, second).status_code == 401

    # CSRF: a cookie-authenticated change needs the session's token.
    cookie, csrf = login(ca)
    assert rename(cb, cookie, None).status_code == 403
    assert rename(cb, cookie, "wrong-token").status_code == 403
    assert rename(cb, cookie, csrf).status_code == 200

    # Idle timeout, then absolute timeout even for a session in constant use. The bounds
    # hold by causality, however slow the machine: the server starts a session's clocks
    # after the login request is sent and before its answer arrives.
    idle, _ = login(ca)
    time.sleep(IDLE_S + 0.2)  # untouched for longer than the idle timeout
    expired = me(cb, idle)
    assert expired.status_code == 401
    assert "expired" in expired.json()["detail"] or "ended" in expired.json()["detail"]
    sent = time.monotonic()
    busy, _ = login(ca)
    answered = time.monotonic()
    while time.monotonic() - answered < IDLE_S + 0.5:  # used past the idle timeout: kept
        assert me(cb, busy).status_code == 200
        time.sleep(0.3)
    assert wait_until(lambda: me(cb, busy).status_code == 401, timeout=ABSOLUTE_S + 30)
    ended_after = time.monotonic() - sent
    assert ended_after >= ABSOLUTE_S, ended_after  # never before the absolute timeout

    def socket_token(client: httpx.Client, cookie: str, csrf: str, agent: str = browser) -> str:
        """The short-lived access token the app opens its WebSocket with."""
        minted = client.post(
            "/api/v1/auth/session/token",
            headers={"User-Agent": agent, "Cookie": f"apex_session={cookie}", "X-CSRF-Token": csrf},
        )
        assert minted.status_code == 200, minted.text
        return str(minted.json()["access_token"])

    def as_bearer(client: httpx.Client, token: str) -> httpx.Response:
        return client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {token}"})

    # List, revoke one, then log out everywhere. The sessions' WebSocket tokens end with them.
    laptop, laptop_csrf = login(ca)
    phone, phone_csrf = login(ca, agent="Apex-Phone/2")
    laptop_token = socket_token(ca, laptop, laptop_csrf)
    phone_token = socket_token(cb, phone, phone_csrf, agent="Apex-Phone/2")
    assert as_bearer(ca, phone_token).status_code == 200
    listed = ca.get(
        "/api/v1/auth/sessions", headers={"User-Agent": browser, "Cookie": f"apex_session={laptop}"}
    )
    assert listed.status_code == 200
    agents = {s["user_agent"] for s in listed.json()}
    assert {browser, "Apex-Phone/2"} <= agents
    phone_id = next(s["id"] for s in listed.json() if s["user_agent"] == "Apex-Phone/2")
    assert phone not in listed.text  # sessions are listed by public id, never by cookie
    revoked = cb.delete(
        f"/api/v1/auth/sessions/{phone_id}",
        headers={
            "User-Agent": browser,
            "Cookie": f"apex_session={laptop}",
            "X-CSRF-Token": laptop_csrf,
        },
    )
    assert revoked.status_code == 204
    assert me(ca, phone, agent="Apex-Phone/2").status_code == 401
    assert me(ca, laptop).status_code == 200
    phone_after = as_bearer(ca, phone_token)  # minted on B, the session revoked on B, used on A
    assert phone_after.status_code == 401
    assert phone_after.json()["detail"] == "This access token was revoked (logged out)."
    assert as_bearer(ca, laptop_token).status_code == 200  # the other session's token stands

    # A session holds at most 50 live WebSocket tokens, counted across instances: the 51st
    # is refused with a Retry-After no longer than a token lives (300 s), and remembers
    # nothing; the 50 keep working (and a logout below still reaches every one of them).
    kiosk, kiosk_csrf = login(ca, agent="Apex-Kiosk/1")
    kiosk_tokens = [
        socket_token(ca if i % 2 else cb, kiosk, kiosk_csrf, agent="Apex-Kiosk/1")
        for i in range(50)
    ]
    refused = cb.post(
        "/api/v1/auth/session/token",
        headers={
            "User-Agent": "Apex-Kiosk/1",
            "Cookie": f"apex_session={kiosk}",
            "X-CSRF-Token": kiosk_csrf,
        },
    )
    assert refused.status_code == 429, refused.text
    assert 1 <= int(refused.headers["Retry-After"]) <= 300
    assert "50 live WebSocket tokens" in refused.json()["detail"]
    assert "access_token" not in refused.text
    assert len(set(kiosk_tokens)) == 50
    assert as_bearer(ca, kiosk_tokens[0]).status_code == 200
    assert as_bearer(cb, kiosk_tokens[-1]).status_code == 200

    other, _ = login(ca, agent="Apex-Tablet/3")
    everywhere = cb.post(
        "/api/v1/auth/logout-everywhere",
        headers={
            "User-Agent": browser,
            "Cookie": f"apex_session={laptop}",
            "X-CSRF-Token": laptop_csrf,
        },
    )
    assert everywhere.status_code == 204
    assert me(ca, laptop).status_code == 401
    assert as_bearer(cb, laptop_token).status_code == 401
    assert [as_bearer(ca, t).status_code for t in kiosk_tokens] == [401] * 50
    assert me(cb, other, agent="Apex-Tablet/3").status_code == 401
    refreshed = ca.post("/api/v1/auth/refresh", json={"refresh_token": account["refresh_token"]})
    assert refreshed.status_code == 401  # refresh tokens went too
    ca.close()
    cb.close()


# --- OAuth / OpenID Connect ----------------------------------------------------------------
def test_oauth_complete_flow_integration(
    postgres: PostgresCluster,
    database_url: str,
    fresh_redis: RedisServer,
    start_apex: Callable[..., ApexServer],
) -> None:
    a = ApexServer(
        {
            "APEX_DATABASE_URL": database_url,
            "APEX_REDIS_URL": fresh_redis.url,
            "APEX_SECRET_KEY": SECRET,
            "APEX_ENVIRONMENT": "test",
            "APEX_SESSION_COOKIE_SECURE": "false",
        }
    )
    callback = f"{a.base_url}/api/v1/auth/oidc/local/callback"
    provider = OidcProvider(
        client_id="apex-web", client_secret="provider-secret-123", redirect_uri=callback
    )
    provider.start()
    a.env["APEX_OIDC_PROVIDERS"] = json.dumps(
        [
            {
                "name": "local",
                "issuer": provider.issuer,
                "client_id": "apex-web",
                "client_secret": "provider-secret-123",
                "redirect_uri": callback,
            }
        ]
    )
    sessions = redis.Redis.from_url(fresh_redis.url, decode_responses=True)
    try:
        a.start()
        b = start_apex(database_url, fresh_redis.url, session_cookie_secure="false")
        agent = {"User-Agent": "Apex-OIDC-Browser/1"}

        def begin() -> tuple[httpx.Client, str]:
            """A fresh browser starts a login at Apex; returns it and the provider URL."""
            browser = httpx.Client(headers=agent, follow_redirects=False, timeout=10)
            started = browser.get(f"{a.base_url}/api/v1/auth/oidc/local/login")
            assert started.status_code == 302
            location = started.headers["location"]
            assert location.startswith(f"{provider.issuer}/authorize?")
            query = parse_qs(urlsplit(location).query)
            assert query["code_challenge_method"] == ["S256"]
            assert query["nonce"]
            assert query["state"]
            return browser, location

        def authorize(browser: httpx.Client, location: str) -> str:
            answer = browser.get(location)
            assert answer.status_code == 302, answer.text
            return str(answer.headers["location"])

        def session_count() -> int:
            return len(sessions.keys("apex:session:*"))

        # The whole dance over real HTTP, then the session on the other instance.
        browser, location = begin()
        back = authorize(browser, location)
        assert back.startswith(callback + "?")
        done = browser.get(back)
        assert done.status_code == 200, done.text
        cookie = done.cookies["apex_session"]
        me = cb_me = httpx.get(
            f"{b.base_url}/api/v1/users/me", headers={**agent, "Cookie": f"apex_session={cookie}"}
        )
        assert cb_me.status_code == 200
        assert me.json()["email"] == "oidc-user@example.test"
        user_id = me.json()["id"]
        assert (
            postgres.sql(
                f"SELECT tier FROM organizations WHERE id = '{done.json()['organization_id']}'",  # noqa: S608
                database_name(database_url),
            )
            == "free"
        )

        # A later login with the same verified email is the same user.
        again, location = begin()
        assert again.get(authorize(again, location)).json()["user_id"] == user_id

        baseline = session_count()
        rejected: dict[str, int] = {}

        # state mismatch: the callback carries a state this browser did not start.
        victim, location = begin()
        _, other = begin()  # another browser's login
        forged = authorize(victim, location).replace(
            parse_qs(urlsplit(location).query)["state"][0],
            parse_qs(urlsplit(other).query)["state"][0],
        )
        rejected["state mismatch"] = victim.get(forged).status_code

        # A reused authorization code, inside a freshly started login.
        used_code = parse_qs(urlsplit(back).query)["code"][0]
        replay, location = begin()
        state = parse_qs(urlsplit(location).query)["state"][0]
        rejected["reused code"] = replay.get(
            f"{callback}?{urlencode({'code': used_code, 'state': state})}"
        ).status_code

        # A redirect URI changed by one character: the provider issues no code for it.
        tampered, location = begin()
        bent = location.replace(quote(callback, safe=""), quote(callback + "x", safe=""))
        assert bent != location
        rejected["redirect URI + 1 char"] = tampered.get(bent).status_code

        scripts: dict[str, dict[str, Any]] = {
            "nonce mismatch": {"nonce": "not-the-one-apex-sent"},
            "wrong aud": {"aud": "another-client"},
            "unknown signing key": {"unknown_key": True},
        }
        for name, behaviour in scripts.items():
            provider.script(**behaviour)
            scripted, location = begin()
            rejected[name] = scripted.get(authorize(scripted, location)).status_code
            provider.script()

        print(f"\noauth: rejected {rejected}")
        assert rejected == {
            "state mismatch": 401,
            "reused code": 401,
            "redirect URI + 1 char": 400,
            "nonce mismatch": 401,
            "wrong aud": 401,
            "unknown signing key": 401,
        }
        assert session_count() == baseline  # none of them created a session
    finally:
        sessions.close()
        a.stop()
        provider.stop()
