"""API keys for machines: `apx_<prefix>_<secret>`, shown once, stored as a SHA-256 hash.

A key acts for its organisation with the permissions it was created with, which can never
exceed its creator's. The secret has 256 random bits, so a plain SHA-256 is enough (no
password stretching); it is compared in constant time.
"""

from __future__ import annotations

import hmac
import secrets
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from apex.audit import service as audit
from apex.identity.models import ApiKey
from apex.identity.policy import LEAST_ROLE
from apex.identity.repository import ApiKeyRepository
from apex.kit.digest import sha256_hex
from apex.kit.errors import Forbidden, NotFound, Unauthorized, ValidationFailed

PREFIX = "apx_"


def looks_like_api_key(token: str) -> bool:
    return token.startswith(PREFIX)


async def create(
    session: AsyncSession,
    *,
    organization_id: uuid.UUID,
    created_by: uuid.UUID,
    creator_may: Callable[[str], bool],
    name: str,
    permissions: list[str],
) -> tuple[ApiKey, str]:
    unknown = sorted(set(permissions) - set(LEAST_ROLE))
    if unknown:
        raise ValidationFailed(
            "Unknown permissions.",
            errors=[{"field": "permissions", "message": f"unknown: {unknown}"}],
        )
    beyond = sorted(p for p in set(permissions) if not creator_may(p))
    if beyond:
        raise Forbidden(f"A key cannot hold permissions your role lacks: {', '.join(beyond)}.")
    prefix, secret = secrets.token_hex(4), secrets.token_urlsafe(32)
    key = ApiKey(
        organization_id=organization_id,
        created_by_id=created_by,
        name=name,
        prefix=prefix,
        key_hash=sha256_hex(secret),
        permissions=sorted(set(permissions)),
    )
    await ApiKeyRepository(session, organization_id).add(key)
    return key, f"{PREFIX}{prefix}_{secret}"


# A key's use is audited once per hour it is used (its first use, then hourly while used):
# the trail shows which keys act and when, without a record per request.
USE_AUDITED_EVERY = timedelta(hours=1)


async def authenticate(session: AsyncSession, token: str, now: datetime) -> ApiKey:
    prefix, _, secret = token.removeprefix(PREFIX).partition("_")
    key = await ApiKeyRepository(session, None).by_prefix(prefix) if prefix and secret else None
    if key is None or not hmac.compare_digest(key.key_hash, sha256_hex(secret)):
        raise Unauthorized("Invalid API key.")
    if key.revoked_at is not None:
        raise Unauthorized("This API key was revoked.")
    previous, key.last_used_at = key.last_used_at, now
    if previous is None or now - previous >= USE_AUDITED_EVERY:
        # In the request's transaction: a use the request rolls back is not recorded.
        await audit.record(session, "api_key.used", now=now, organization_id=key.organization_id,
                           target=("api_key", key.id), name=key.name,
                           first_use=previous is None)  # fmt: skip
    return key


async def revoke(
    session: AsyncSession, organization_id: uuid.UUID, key_id: uuid.UUID, now: datetime
) -> None:
    key = await ApiKeyRepository(session, organization_id).of_organization(key_id)
    if key is None:
        raise NotFound("No such API key.")
    key.revoked_at = key.revoked_at or now
    await session.flush()
