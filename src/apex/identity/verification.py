"""Proving an address by mail: sign-up verification and password reset.

Neither request tells the caller whether an account uses the address: sign-up and reset
answer the same 202 either way, after the same work (a password hash, a mail). Sign-up
mails a verification token to a new address and a "you already have an account" note to a
known one; the account is created only when the token comes back, so nobody can hold an
address they cannot read. Reset mails a token only to an active account.

Tokens are random, stored as SHA-256, single-use (the row is locked while it is spent) and
expire (`SIGNUP_HOURS`, `RESET_MINUTES`). A mail-limit per address and purpose stops
anyone using Apex to flood an inbox; over it, the answer is still the same 202.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from apex.identity.models import EmailToken, Organization, TokenPurpose, User
from apex.identity.passwords import hash_password
from apex.identity.repository import UserRepository
from apex.identity.schemas import SignupRequest
from apex.identity.service import create_account
from apex.identity.throttle import account_key
from apex.kit.digest import sha256_hex
from apex.kit.errors import Conflict, NotFound
from apex.kit.failpoints import Failpoints
from apex.kit.limits import FixedWindow
from apex.kit.repository import Repository

log = structlog.get_logger(__name__)

SIGNUP_HOURS = 24
RESET_MINUTES = 60


class EmailTokenRepository(Repository[EmailToken]):
    model = EmailToken

    async def spendable(self, token: str, purpose: TokenPurpose, now: datetime) -> EmailToken:
        """The unused, unexpired token of `purpose`, locked until the transaction ends."""
        row: EmailToken | None = await self.session.scalar(
            select(EmailToken)
            .where(EmailToken.token_hash == sha256_hex(token), EmailToken.purpose == purpose.value)
            .with_for_update()
        )
        if row is None or row.used_at is not None or row.expires_at <= now:
            raise NotFound("This token is unknown, used or expired: ask for a new one.")
        return row

    async def retire_others(self, email: str, purpose: TokenPurpose, now: datetime) -> None:
        """Spend every other open token of `purpose` for `email` (one reset ends them all)."""
        rows = await self.session.scalars(
            select(EmailToken).where(
                EmailToken.email == email,
                EmailToken.purpose == purpose.value,
                EmailToken.used_at.is_(None),
            )
        )
        for row in rows:
            row.used_at = now
        await self.session.flush()


async def _new_token(
    session: AsyncSession,
    purpose: TokenPurpose,
    email: str,
    lifetime: timedelta,
    now: datetime,
    payload: dict[str, Any] | None = None,
) -> str:
    token = secrets.token_urlsafe(32)
    await EmailTokenRepository(session).add(
        EmailToken(
            purpose=purpose.value,
            email=email,
            token_hash=sha256_hex(token),
            payload=payload or {},
            expires_at=now + lifetime,
        )
    )
    return token


class MailLimit:
    """At most `per_hour` mails of one kind to one address (counted in Redis; open if
    Redis is unreachable, as the other limits are)."""

    def __init__(self, redis: Redis, per_hour: int) -> None:
        self.window = FixedWindow(redis, prefix="apex:mail")
        self.per_hour = per_hour

    async def allows(self, purpose: TokenPurpose, email: str, now: float) -> bool:
        try:
            decision = await self.window.hit(
                purpose.value, account_key(email), limit=self.per_hour, window_seconds=3600, now=now
            )
        except RedisError as exc:
            log.warning("mail_limit_unavailable", error=type(exc).__name__)
            return True
        if not decision.allowed:
            log.warning("mail_limited", purpose=purpose.value)
        return decision.allowed


# --- sign-up ---------------------------------------------------------------------------------


async def request_signup(session: AsyncSession, data: SignupRequest, now: datetime) -> str | None:
    """The verification token to mail for a new address, or None if an account uses it.
    The password is hashed either way, so both answers take as long."""
    password_hash = await hash_password(data.password)
    if await UserRepository(session).get_by_email(data.email) is not None:
        return None
    payload = {
        "display_name": data.display_name,
        "password_hash": password_hash,
        "organization_name": data.organization_name,
        "organization_slug": data.organization_slug,
    }
    return await _new_token(
        session, TokenPurpose.VERIFY_SIGNUP, data.email, timedelta(hours=SIGNUP_HOURS), now, payload
    )


async def verify_signup(
    session: AsyncSession, token: str, now: datetime, failpoints: Failpoints
) -> tuple[User, Organization]:
    """Spend a verification token: create the account and its organisation (one unit)."""
    row = await EmailTokenRepository(session).spendable(token, TokenPurpose.VERIFY_SIGNUP, now)
    row.used_at = now
    if await UserRepository(session).get_by_email(row.email) is not None:
        raise Conflict("This address is verified already: sign in.", field="token")
    return await create_account(
        session,
        email=row.email,
        display_name=row.payload.get("display_name"),
        password_hash=row.payload["password_hash"],
        organization_name=row.payload["organization_name"],
        organization_slug=row.payload.get("organization_slug"),
        failpoints=failpoints,
    )


def verification_text(token: str, app_url: str) -> str:
    # The token rides in the link's fragment: a browser never sends it to a server or in
    # a Referer, so it reaches no log; the page posts it to the API.
    return (
        "Someone (we hope you) signed up for Apex with this address.\n\n"
        "To create the account, confirm the address: open\n\n"
        f"    {app_url}/#/verify?token={token}\n\n"
        "or, from a program:\n\n"
        "    POST /api/v1/auth/verify\n"
        f'    {{"token": "{token}"}}\n\n'
        f"The token works once, within {SIGNUP_HOURS} hours. If it was not you, ignore this mail.\n"
    )


ALREADY_REGISTERED_TEXT = (
    "Someone (we hope you) tried to sign up for Apex with this address, which already has an "
    "account. Sign in instead; if you have forgotten the password, reset it:\n\n"
    "    POST /api/v1/auth/password-reset\n"
    '    {"email": "<this address>"}\n\n'
    "If it was not you, ignore this mail: nothing has changed.\n"
)


# --- password reset --------------------------------------------------------------------------


async def request_reset(session: AsyncSession, email: str, now: datetime) -> str | None:
    """A reset token for an active account with a password, else None."""
    user = await UserRepository(session).get_by_email(email)
    if user is None or not user.is_active:
        return None
    return await _new_token(
        session, TokenPurpose.RESET_PASSWORD, email, timedelta(minutes=RESET_MINUTES), now
    )


async def reset_password(session: AsyncSession, token: str, password: str, now: datetime) -> User:
    """Spend a reset token (and every other open one for the address); set the password."""
    tokens = EmailTokenRepository(session)
    row = await tokens.spendable(token, TokenPurpose.RESET_PASSWORD, now)
    user = await UserRepository(session).get_by_email(row.email)
    if user is None or not user.is_active:
        raise NotFound("This token is unknown, used or expired: ask for a new one.")
    await tokens.retire_others(row.email, TokenPurpose.RESET_PASSWORD, now)
    user.password_hash = await hash_password(password)
    await session.flush()
    return user


def reset_text(token: str, app_url: str) -> str:
    return (
        "Someone (we hope you) asked to reset the password of your Apex account. Choose a new "
        f"one at\n\n    {app_url}/#/reset?token={token}\n\nor, from a program:\n\n"
        "    POST /api/v1/auth/password-reset/confirm\n"
        f'    {{"token": "{token}", "password": "<a new password, 12 characters or more>"}}\n\n'
        f"The token works once, within {RESET_MINUTES} minutes, and signs you out everywhere. "
        "If it was not you, ignore this mail: your password is unchanged.\n"
    )
