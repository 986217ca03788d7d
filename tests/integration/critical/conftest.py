"""Helpers shared by the critical suite: sign-ups through the real API, row counts."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx

from tests.harness import PostgresCluster
from tests.harness.smtp import SmtpServer, token_in
from tests.integration.conftest import SharedMail

CORE_TABLES = ("users", "organizations", "memberships", "threads", "messages", "outbox_messages")


SIGNUP = "/api/v1/auth/signup"
VERIFY = "/api/v1/auth/verify"
VERIFICATION_SUBJECT = "Confirm your address"
INVITATIONS = "/api/v1/organizations/current/invitations"


def signup_body(**overrides: Any) -> dict[str, Any]:
    """A new user and organisation, unique per call."""
    tag = uuid.uuid4().hex[:10]
    return {
        "email": f"user-{tag}@example.test",
        "password": "correct horse battery staple",
        "organization_name": f"Org {tag}",
        **overrides,
    }


def signup(
    client: httpx.Client, *, mail_server: SmtpServer | None = None, **overrides: Any
) -> httpx.Response:
    """Sign up as a person does: ask (202), read the verification mail the SMTP server
    received (the session's, unless the server mails another), spend its token. The
    verification's answer (201 with tokens), or the sign-up's own if it was refused."""
    body = signup_body(**overrides)
    mail = mail_server or SharedMail.get()
    seen = mail.keys()
    asked = client.post(SIGNUP, json=body)
    if asked.status_code != 202:
        return asked
    token = token_in(mail.next_mail(body["email"], seen=seen, subject=VERIFICATION_SUBJECT))
    return client.post(VERIFY, json={"token": token})


async def signup_async(client: httpx.AsyncClient, **overrides: Any) -> httpx.Response:
    """`signup` for an async client."""
    body = signup_body(**overrides)
    mail = SharedMail.get()
    seen = mail.keys()
    asked = await client.post(SIGNUP, json=body)
    if asked.status_code != 202:
        return asked
    received = await asyncio.to_thread(
        mail.next_mail, body["email"], seen=seen, subject=VERIFICATION_SUBJECT
    )
    return await client.post(VERIFY, json={"token": token_in(received)})


def join(
    client: httpx.Client, owner: dict[str, str], role: str, **overrides: Any
) -> dict[str, Any]:
    """A new account that accepts the owner's invitation with `role`: its sign-up tokens
    (acting for its own organisation) and `email`. Log in with `organization_id` to act
    for the owner's."""
    account = signup(client, **overrides)
    assert account.status_code == 201, account.text
    auth = bearer(account)
    email = client.get("/api/v1/users/me", headers=auth).json()["email"]
    invited = client.post(INVITATIONS, headers=owner, json={"email": email, "role": role})
    assert invited.status_code == 201, invited.text
    accepted = client.post(
        "/api/v1/invitations/accept", headers=auth, json={"token": invited.json()["token"]}
    )
    assert accepted.status_code == 200, accepted.text
    return {**account.json(), "email": email}


def bearer(response: httpx.Response) -> dict[str, str]:
    assert response.status_code in (200, 201), response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def row_counts(cluster: PostgresCluster, database: str) -> dict[str, int]:
    query = " UNION ALL ".join(f"SELECT '{t}', count(*) FROM {t}" for t in CORE_TABLES)  # noqa: S608
    rows = cluster.sql(query, database).splitlines()
    return {name: int(count) for name, count in (row.split("|") for row in rows)}


def findings(report: dict[str, Any]) -> dict[tuple[str, str], tuple[str, str, str]]:
    """A report's recommendations as (kind, workload) → (current, projected, savings)."""
    return {
        (r["kind"], r["workload"]): (
            r["current_monthly_usd"],
            r["projected_monthly_usd"],
            r["savings_monthly_usd"],
        )
        for r in report["recommendations"]
    }


def set_tier(cluster: PostgresCluster, database_url: str, organization_id: str, tier: str) -> None:
    """Put an organisation on a plan (no billing yet: straight in the database)."""
    cluster.sql(
        f"UPDATE organizations SET tier = '{tier}' WHERE id = '{organization_id}'",  # noqa: S608
        database_name(database_url),
    )


def database_name(url: str) -> str:
    return url.rsplit("/", 1)[1]
