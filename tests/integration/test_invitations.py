"""Invitations through a real server: for an email, once, by the right account."""

from __future__ import annotations

from collections.abc import Callable

from apex.identity.endpoints import INVITATIONS, MEMBERS
from tests.harness import ApexServer, RedisServer
from tests.integration.critical.conftest import bearer, signup


def test_invitation_lifecycle(
    database_url: str, redis_server: RedisServer, start_apex: Callable[..., ApexServer]
) -> None:
    server = start_apex(database_url, redis_server.url)
    with server.client() as client:
        owner = signup(client).json()
        as_owner = bearer_of(owner)
        invited = client.post(
            f"/api/v1{INVITATIONS}",
            headers=as_owner,
            json={"email": "New.Person@Example.test", "role": "admin"},
        )
        assert invited.status_code == 201
        token = invited.json()["token"]
        assert invited.json()["email"] == "new.person@example.test"
        assert [i["id"] for i in client.get(f"/api/v1{INVITATIONS}", headers=as_owner).json()] == [
            invited.json()["id"]
        ]

        # Someone else cannot use it; the invited address can, once.
        stranger = bearer(signup(client))
        wrong = client.post("/api/v1/invitations/accept", headers=stranger, json={"token": token})
        assert wrong.status_code == 403
        newcomer = bearer(signup(client, email="new.person@example.test"))
        joined = client.post("/api/v1/invitations/accept", headers=newcomer, json={"token": token})
        assert joined.status_code == 200, joined.text
        assert joined.json()["role"] == "admin"
        again = client.post("/api/v1/invitations/accept", headers=newcomer, json={"token": token})
        assert again.status_code == 404
        members = client.get(f"/api/v1{MEMBERS}", headers=as_owner).json()
        assert {m["email"]: m["role"] for m in members}["new.person@example.test"] == "admin"
        assert client.get(f"/api/v1{INVITATIONS}", headers=as_owner).json() == []

        # Revoked invitations cannot be used; only owners invite owners.
        revoked = client.post(
            f"/api/v1{INVITATIONS}", headers=as_owner, json={"email": "later@example.test"}
        )
        assert (
            client.delete(
                f"/api/v1{INVITATIONS}/{revoked.json()['id']}", headers=as_owner
            ).status_code
            == 204
        )
        later = bearer(signup(client, email="later@example.test"))
        dead = client.post(
            "/api/v1/invitations/accept", headers=later, json={"token": revoked.json()["token"]}
        )
        assert dead.status_code == 404
        as_admin = {
            "Authorization": "Bearer "
            + client.post(
                "/api/v1/auth/token",
                json={
                    "email": "new.person@example.test",
                    "password": "correct horse battery staple",
                    "organization_id": owner["organization_id"],
                },
            ).json()["access_token"]
        }
        owner_invite = client.post(
            f"/api/v1{INVITATIONS}",
            headers=as_admin,
            json={"email": "boss@example.test", "role": "owner"},
        )
        assert owner_invite.status_code == 403


def bearer_of(tokens: dict[str, str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['access_token']}"}
