"""API keys through a real server: shown once, stored hashed, limited, revocable."""

from __future__ import annotations

from collections.abc import Callable

from apex.identity.endpoints import API_KEYS
from apex.identity.endpoints import INVITATIONS as INVITATIONS_PATH
from apex.identity.endpoints import MEMBERS as MEMBERS_PATH
from tests.harness import ApexServer, PostgresCluster, RedisServer
from tests.integration.critical.conftest import (
    bearer,
    database_name,
    join,
    set_tier,
    signup,
    signup_body,
)

KEYS = f"/api/v1{API_KEYS}"
MEMBERS = f"/api/v1{MEMBERS_PATH}"
INVITATIONS = f"/api/v1{INVITATIONS_PATH}"
PASSWORD = signup_body()["password"]


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
        # A key is not a person: it has no profile, sessions or logout.
        for method, path in [
            ("GET", "/api/v1/users/me"),
            ("GET", "/api/v1/auth/sessions"),
            ("POST", "/api/v1/auth/logout"),
            ("POST", "/api/v1/auth/logout-everywhere"),
        ]:
            refused = client.request(method, path, headers=as_key)
            assert refused.status_code == 403, (method, path, refused.text)
            assert "API keys cannot use this endpoint" in refused.json()["detail"]

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
        # Nor can it mint a key within its own rights: keys are made by people.
        minted = client.post(KEYS, headers=key, json={"name": "e", "permissions": ["org:read"]})
        assert minted.status_code == 403
        assert len(client.get(KEYS, headers=owner).json()) == 1


def test_a_key_holds_its_rights_only_while_its_creator_does(
    postgres: PostgresCluster,
    database_url: str,
    redis_server: RedisServer,
    start_apex: Callable[..., ApexServer],
) -> None:
    """An admin's key, used on another instance: demoting the admin takes the key's rights
    on the next request; removing the admin makes the key act for no one."""
    a = start_apex(database_url, redis_server.url)
    b = start_apex(database_url, redis_server.url)
    with a.client() as ca, b.client() as cb:
        owner_signup = signup(ca)
        owner = bearer(owner_signup)
        set_tier(postgres, database_url, owner_signup.json()["organization_id"], "early")
        admin_account = join(ca, owner, "admin")
        admin_id, email = admin_account["user_id"], admin_account["email"]
        org = ca.get("/api/v1/users/me", headers=owner).json()["memberships"][0]
        credentials = {
            "email": email,
            "password": PASSWORD,
            "organization_id": org["organization_id"],
        }
        login = ca.post("/api/v1/auth/token", json=credentials)
        admin = bearer(login)
        scopes = {"name": "ops", "permissions": ["org:manage", "members:manage"]}
        made = ca.post(KEYS, headers=admin, json=scopes)
        assert made.status_code == 201, made.text
        key = {"Authorization": f"Bearer {made.json()['key']}"}
        rename = {"name": "Renamed by the key"}
        assert (
            cb.patch("/api/v1/organizations/current", headers=key, json=rename).status_code == 200
        )

        # Demoted to viewer: the key's org:manage and members:manage go with it.
        demoted = ca.patch(f"{MEMBERS}/{admin_id}", headers=owner, json={"role": "viewer"})
        assert demoted.status_code == 200, demoted.text
        refused = cb.patch("/api/v1/organizations/current", headers=key, json=rename)
        assert refused.status_code == 403
        assert refused.json()["detail"] == "This API key lacks the permission 'org:manage'."
        assert cb.get(MEMBERS, headers=key).status_code == 403  # org:read was never a scope

        # Removed: the key acts for no one, and cannot invite its creator back.
        assert ca.delete(f"{MEMBERS}/{admin_id}", headers=owner).status_code == 204
        back = cb.post(INVITATIONS, headers=key, json={"email": email, "role": "admin"})
        assert back.status_code == 401
        assert "no longer a member" in back.json()["detail"]
        members = ca.get(MEMBERS, headers=owner).json()
        assert [m["role"] for m in members] == ["owner"]
    assert (
        postgres.sql(
            "SELECT name FROM organizations WHERE name = 'Renamed by the key'",
            database_name(database_url),
        ).strip()
        == "Renamed by the key"
    )
