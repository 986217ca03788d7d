"""API keys through a real server: shown once, stored hashed, limited, revocable."""

from __future__ import annotations

from collections.abc import Callable

from apex.identity.endpoints import API_KEYS
from tests.harness import ApexServer, PostgresCluster, RedisServer
from tests.integration.critical.conftest import bearer, database_name, signup

KEYS = f"/api/v1{API_KEYS}"


def test_api_key_lifecycle(
    postgres: PostgresCluster,
    database_url: str,
    redis_server: RedisServer,
    start_apex: Callable[..., ApexServer],
) -> None:
    server = start_apex(database_url, redis_server.url)
    with server.client() as client:
        owner = bearer(signup(client))
        created = client.post(
            KEYS, headers=owner, json={"name": "reader", "permissions": ["org:read"]}
        )
        assert created.status_code == 201
        body = created.json()
        key = body["key"]
        assert key.startswith(f"apx_{body['prefix']}_")
        as_key = {"Authorization": f"Bearer {key}"}

        # Shown once: lists show the prefix, never the key; the database holds only a hash.
        listed = client.get(KEYS, headers=owner).json()
        assert [k["prefix"] for k in listed] == [body["prefix"]]
        assert key not in client.get(KEYS, headers=owner).text
        secret = key.rsplit("_", 1)[1]
        stored = postgres.sql(
            "SELECT key_hash || permissions::text FROM api_keys", database_name(database_url)
        )
        assert secret not in stored

        # Limited to its permissions.
        assert client.get("/api/v1/organizations/current", headers=as_key).status_code == 200
        denied = client.patch("/api/v1/organizations/current", headers=as_key, json={"name": "x"})
        assert denied.status_code == 403
        assert denied.json()["permission"] == "org:manage"
        assert client.post("/api/v1/auth/logout", headers=as_key).status_code == 400

        # A wrong secret behind a real prefix, and an unknown permission, are refused.
        forged = {"Authorization": f"Bearer apx_{body['prefix']}_{'A' * 43}"}
        assert client.get("/api/v1/organizations/current", headers=forged).status_code == 401
        unknown = client.post(
            KEYS, headers=owner, json={"name": "x", "permissions": ["everything"]}
        )
        assert unknown.status_code == 422
        assert unknown.json()["errors"][0]["field"] == "permissions"

        # Revoked: refused at once.
        assert client.delete(f"{KEYS}/{body['id']}", headers=owner).status_code == 204
        revoked = client.get("/api/v1/organizations/current", headers=as_key)
        assert revoked.status_code == 401
        assert revoked.json()["detail"] == "This API key was revoked."
        assert client.get(KEYS, headers=owner).json()[0]["revoked_at"] is not None


def test_a_key_cannot_exceed_its_creators_role(
    database_url: str, redis_server: RedisServer, start_apex: Callable[..., ApexServer]
) -> None:
    server = start_apex(database_url, redis_server.url)
    with server.client() as client:
        owner = bearer(signup(client))
        made = client.post(KEYS, headers=owner, json={"name": "m", "permissions": ["org:manage"]})
        key = {"Authorization": f"Bearer {made.json()['key']}"}
        # A key holding org:manage (which lets it create keys) still cannot mint billing:manage:
        # its principal is an API key, whose role grants nothing beyond the key's own list.
        escalated = client.post(
            KEYS, headers=key, json={"name": "e", "permissions": ["billing:manage"]}
        )
        assert escalated.status_code == 403
