"""Invitations through a real server: for an email, once, by the right account."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from apex.identity.endpoints import INVITATIONS, MEMBERS
from tests.harness import ApexServer, PostgresCluster, RedisServer
from tests.harness.smtp import SmtpServer, token_in
from tests.integration.critical.conftest import bearer, join, set_tier, signup


def test_invitation_lifecycle(
    postgres: PostgresCluster,
    database_url: str,
    redis_server: RedisServer,
    start_apex: Callable[..., ApexServer],
) -> None:
    server = start_apex(database_url, redis_server.url)
    with server.client() as client:
        owner = signup(client).json()
        as_owner = bearer_of(owner)
        # Free has one seat, the owner's: nobody can be invited or added.
        refused = client.post(f"/api/v1{INVITATIONS}", headers=as_owner,
                              json={"email": "someone@example.test"})  # fmt: skip
        assert refused.status_code == 429
        body = refused.json()
        assert (body["error"], body["limit"], body["upgrade"]) == ("QuotaExceeded", 1, "early")
        assert "Retry-After" not in refused.headers  # waiting does not free a seat
        set_tier(postgres, database_url, owner["organization_id"], "early")  # 5 seats
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


def test_seats_count_members_and_pending_invitations(
    postgres: PostgresCluster,
    database_url: str,
    redis_server: RedisServer,
    start_apex: Callable[..., ApexServer],
) -> None:
    """Early has 5 seats: the owner, 3 members and 1 pending invitation fill them."""
    server = start_apex(database_url, redis_server.url)
    with server.client() as client:
        owner = signup(client).json()
        as_owner = bearer_of(owner)
        set_tier(postgres, database_url, owner["organization_id"], "early")
        for _ in range(3):
            join(client, as_owner, "member")
        invited = client.post(f"/api/v1{INVITATIONS}", headers=as_owner,
                              json={"email": "fifth@example.test"})  # fmt: skip
        assert invited.status_code == 201
        full = client.post(f"/api/v1{INVITATIONS}", headers=as_owner,
                           json={"email": "sixth@example.test"})  # fmt: skip
        assert full.status_code == 429
        assert "5 seats, all taken (4 members, 1 pending invitations)" in full.json()["detail"]
        # The invited person still gets in: their seat was held for them.
        fifth = bearer(signup(client, email="fifth@example.test"))
        token = invited.json()["token"]
        joined = client.post("/api/v1/invitations/accept", headers=fifth, json={"token": token})
        assert joined.status_code == 200, joined.text
        assert len(client.get(f"/api/v1{MEMBERS}", headers=as_owner).json()) == 5


def test_the_invitee_is_mailed_the_invitation(
    postgres: PostgresCluster,
    database_url: str,
    redis_server: RedisServer,
    mail_server: SmtpServer,
    start_apex: Callable[..., ApexServer],
) -> None:
    """Through a real SMTP server: the invitation mail reaches the invited address with a
    token that works; an invitation refused (no seat) mails nobody."""
    server = start_apex(database_url, redis_server.url, mail_from="Apex <apex@example.test>")
    with server.client() as client:
        owner = signup(client).json()
        as_owner = bearer_of(owner)
        before_refusal = mail_server.keys()
        refused = client.post(f"/api/v1{INVITATIONS}", headers=as_owner,
                              json={"email": "nobody@example.test"})  # fmt: skip
        assert refused.status_code == 429  # Free: no seat, and so no mail
        set_tier(postgres, database_url, owner["organization_id"], "early")
        colleague = f"colleague-{uuid.uuid4().hex[:8]}@example.test"
        seen = mail_server.keys()
        invited = client.post(f"/api/v1{INVITATIONS}", headers=as_owner,
                              json={"email": colleague, "role": "member"})  # fmt: skip
        assert invited.status_code == 201, invited.text
        mail = mail_server.next_mail(colleague, seen=seen)
        assert mail["From"] == "Apex <apex@example.test>"
        assert "invited to" in mail["Subject"]
        token = token_in(mail)
        as_colleague = bearer(signup(client, email=colleague))
        joined = client.post("/api/v1/invitations/accept", headers=as_colleague,
                             json={"token": token})  # fmt: skip
        assert joined.status_code == 200, joined.text
        to_nobody = [m for k, m in mail_server.mails_since(before_refusal)
                     if m["To"] == "nobody@example.test"]  # fmt: skip
        assert to_nobody == []
        assert "mail_sent" in server.logs()
        assert token not in server.logs()  # logged: recipient and subject, never the body
