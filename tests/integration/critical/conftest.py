"""Helpers shared by the critical suite: sign-ups through the real API, row counts."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from tests.harness import PostgresCluster

CORE_TABLES = ("users", "organizations", "memberships", "threads", "messages", "outbox_messages")


SIGNUP = "/api/v1/auth/signup"


def signup_body(**overrides: Any) -> dict[str, Any]:
    """A new user and organisation, unique per call."""
    tag = uuid.uuid4().hex[:10]
    return {
        "email": f"user-{tag}@example.test",
        "password": "correct horse battery staple",
        "organization_name": f"Org {tag}",
        **overrides,
    }


def signup(client: httpx.Client, **overrides: Any) -> httpx.Response:
    return client.post(SIGNUP, json=signup_body(**overrides))


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
