"""Sign-up verification and password reset through a real server and a real SMTP server:
answers that do not tell whether an account exists, tokens that work once and expire."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from email.message import Message
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from apex.kit.clock import FrozenClock
from tests.harness import ApexServer, PostgresCluster, RedisServer
from tests.harness.procs import wait_until
from tests.harness.smtp import SmtpServer, token_in
from tests.integration.conftest import in_process_app
from tests.integration.critical.conftest import (
    SIGNUP,
    VERIFY,
    bearer,
    database_name,
    signup,
    signup_body,
)

RESET = "/api/v1/auth/password-reset"
CONFIRM = "/api/v1/auth/password-reset/confirm"
TOKEN = "/api/v1/auth/token"
ME = "/api/v1/users/me"


def test_signup_answers_the_same_for_known_and_new_addresses(
    postgres: PostgresCluster,
    database_url: str,
    redis_server: RedisServer,
    mail_server: SmtpServer,
    start_apex: Callable[..., ApexServer],
) -> None:
    server = start_apex(database_url, redis_server.url)
    db = database_name(database_url)
    with server.client() as client:
        known = signup_body()
        assert signup(client, **known).status_code == 201
        users_before = postgres.sql("SELECT count(*) FROM users", db)

        new = signup_body()
        seen = mail_server.keys()
        answers = {
            "known": client.post(SIGNUP, json={**known, "organization_name": "Someone else"}),
            "new": client.post(SIGNUP, json=new),
        }
        assert {name: a.status_code for name, a in answers.items()} == {"known": 202, "new": 202}
        bodies = {name: a.json() for name, a in answers.items()}
        assert bodies["known"] == {**bodies["new"], "email": known["email"]}
        # Nothing is created until the address is proven.
        assert postgres.sql("SELECT count(*) FROM users", db) == users_before
        assert (
            postgres.sql(
                f"SELECT count(*) FROM users WHERE email = '{new['email']}'",  # noqa: S608
                db,
            )
            == "0"
        )

        # The owner of the known address hears that someone tried; the new one gets a token.
        note = mail_server.next_mail(known["email"], seen=seen, subject="already have")
        assert '"token"' not in str(note.get_payload(decode=True))
        verification = mail_server.next_mail(new["email"], seen=seen, subject="Confirm")
        token = token_in(verification)
        created = client.post(VERIFY, json={"token": token})
        assert created.status_code == 201, created.text
        me = client.get(ME, headers=bearer(created)).json()
        assert me["email"] == new["email"]
        assert [m["role"] for m in me["memberships"]] == ["owner"]
        again = client.post(VERIFY, json={"token": token})
        assert again.status_code == 404
        assert client.post(VERIFY, json={"token": "x" * 43}).status_code == 404
        logs = server.logs()
        assert token not in logs
        assert known["password"] not in logs

        # The password the sign-up chose is the account's; the other attempt's is not.
        login = {"email": new["email"], "password": new["password"]}
        assert client.post(TOKEN, json=login).status_code == 200


def test_a_pending_signup_does_not_hold_the_address(
    database_url: str,
    redis_server: RedisServer,
    mail_server: SmtpServer,
    start_apex: Callable[..., ApexServer],
) -> None:
    """Someone who cannot read the mail signs up first: the owner signs up too, verifies,
    and the squatter's token is worthless."""
    server = start_apex(database_url, redis_server.url)
    with server.client() as client:
        owner = signup_body()
        squatter = {**owner, "password": "squatters own password", "organization_name": "Evil"}
        seen = mail_server.keys()
        assert client.post(SIGNUP, json=squatter).status_code == 202
        squatter_mail = mail_server.next_mail(owner["email"], seen=seen, subject="Confirm")
        assert signup(client, **owner).status_code == 201
        late = client.post(VERIFY, json={"token": token_in(squatter_mail)})
        assert late.status_code == 409
        assert late.json()["field"] == "token"
        wrong = {"email": owner["email"], "password": squatter["password"]}
        assert client.post(TOKEN, json=wrong).status_code == 401


def test_signing_up_takes_as_long_for_a_known_address(
    database_url: str,
    redis_server: RedisServer,
    start_apex: Callable[..., ApexServer],
) -> None:
    """The known address is hashed too: without that it answered in 11 ms against 408 ms."""
    server = start_apex(database_url, redis_server.url)
    with server.client() as client:
        known = signup_body()
        assert signup(client, **known).status_code == 201

        def seconds(body: dict[str, str]) -> float:
            started = time.perf_counter()
            assert client.post(SIGNUP, json=body).status_code == 202
            return time.perf_counter() - started

        rounds = 7
        known_s = statistics.median(seconds(known) for _ in range(rounds))
        new_s = statistics.median(seconds(signup_body()) for _ in range(rounds))
    print(f"\nsignup: known address {known_s * 1000:.0f} ms, new {new_s * 1000:.0f} ms (median)")
    assert known_s > new_s / 2, (known_s, new_s)


def test_password_reset_by_mail(
    postgres: PostgresCluster,
    database_url: str,
    redis_server: RedisServer,
    mail_server: SmtpServer,
    start_apex: Callable[..., ApexServer],
) -> None:
    server = start_apex(database_url, redis_server.url, session_cookie_secure="false")
    with server.client() as client:
        account = signup_body()
        signed_up = signup(client, **account)
        refresh_token = signed_up.json()["refresh_token"]
        credentials = {"email": account["email"], "password": account["password"]}
        browser = client.post("/api/v1/auth/session", json=credentials)
        assert browser.status_code == 200, browser.text
        assert client.get(ME).status_code == 200  # by the session cookie

        seen = mail_server.keys()
        answers = [client.post(RESET, json={"email": email}) for email in
                   (account["email"], "nobody-here@example.test", account["email"])]  # fmt: skip
        assert [a.status_code for a in answers] == [202, 202, 202]
        assert answers[1].json() == {**answers[0].json(), "email": "nobody-here@example.test"}

        def resets() -> list[Message]:
            return [m for _, m in mail_server.mails_since(seen)
                    if m["To"] == account["email"] and "Reset" in str(m["Subject"])]  # fmt: skip

        assert wait_until(lambda: len(resets()) == 2, 30)
        first, second = resets()
        assert [m for _, m in mail_server.mails_since(seen) if m["To"] != account["email"]] == []

        too_short = client.post(CONFIRM, json={"token": token_in(first), "password": "short"})
        assert too_short.status_code == 422
        assert [e["field"] for e in too_short.json()["errors"]] == ["password"]
        new_password = "a brand new passphrase"
        done = client.post(CONFIRM, json={"token": token_in(first), "password": new_password})
        assert done.status_code == 204, done.text

        # Single use, and the other outstanding link died with it.
        for mail in (first, second):
            reused = client.post(CONFIRM, json={"token": token_in(mail), "password": "x" * 12})
            assert reused.status_code == 404
        # Signed out everywhere: the refresh token and the browser session are gone.
        refreshed = client.post("/api/v1/auth/refresh", json={"refresh_token": refresh_token})
        assert refreshed.status_code == 401
        assert client.get(ME).status_code == 401  # the cookie's session
        old = client.post(TOKEN, json={"email": account["email"], "password": account["password"]})
        assert old.status_code == 401
        new = client.post(TOKEN, json={"email": account["email"], "password": new_password})
        assert new.status_code == 200
        used = postgres.sql(
            "SELECT count(*), count(used_at) FROM email_tokens WHERE purpose = 'reset_password'",
            database_name(database_url),
        )
        assert used == "2|2"


def test_mails_to_one_address_are_limited(
    database_url: str,
    redis_server: RedisServer,
    mail_server: SmtpServer,
    start_apex: Callable[..., ApexServer],
) -> None:
    """Nobody can use Apex to flood an inbox: past the hourly limit the answer is the same
    202, and no mail goes out."""
    server = start_apex(database_url, redis_server.url, mails_per_address_per_hour="2")
    with server.client() as client:
        account = signup_body()
        assert signup(client, **account).status_code == 201  # one sign-up mail: its own limit
        seen = mail_server.keys()
        answers = [client.post(RESET, json={"email": account["email"]}) for _ in range(4)]
        assert [a.status_code for a in answers] == [202] * 4
        mail_server.next_mail(account["email"], seen=seen, subject="Reset")
        # A later sign-up mail, sent after the resets: any over-limit reset would be in by now.
        marker = signup_body()
        assert signup(client, **marker).status_code == 201
        resets = [m for _, m in mail_server.mails_since(seen) if m["To"] == account["email"]]
        assert len(resets) == 2
        assert "mail_limited" in server.logs()


async def mail_to(mail_server: SmtpServer, to: str, seen: set[str], subject: str) -> Message:
    """Wait for a mail off the event loop, which the in-process app sends it from."""
    return await asyncio.to_thread(mail_server.next_mail, to, seen=seen, subject=subject)


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(datetime(2026, 11, 26, 9, 0, 0, tzinfo=UTC))


@pytest.fixture
async def app(tmp_path: Path, clock: FrozenClock) -> AsyncIterator[FastAPI]:
    async with in_process_app(tmp_path, clock) as application:
        yield application


async def test_tokens_expire(app: FastAPI, clock: FrozenClock, mail_server: SmtpServer) -> None:
    """A verification token lives 24 hours, a reset token 60 minutes (on the app's clock)."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://apex.test") as client:
        late, prompt = signup_body(), signup_body()
        seen = mail_server.keys()
        for body in (late, prompt):
            assert (await client.post(SIGNUP, json=body)).status_code == 202
        mails = {
            body["email"]: token_in(await mail_to(mail_server, body["email"], seen, "Confirm"))
            for body in (late, prompt)
        }
        clock.advance(23 * 3600)
        prompt_answer = await client.post(VERIFY, json={"token": mails[prompt["email"]]})
        assert prompt_answer.status_code == 201
        clock.advance(3600)
        assert (await client.post(VERIFY, json={"token": mails[late["email"]]})).status_code == 404

        seen = mail_server.keys()
        assert (await client.post(RESET, json={"email": prompt["email"]})).status_code == 202
        reset = token_in(await mail_to(mail_server, prompt["email"], seen, "Reset"))
        clock.advance(60 * 60)
        expired = await client.post(CONFIRM, json={"token": reset, "password": "x" * 12})
        assert expired.status_code == 404
