"""Refresh tokens: opaque, stored hashed, rotated on every use, revoked by family on reuse."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from apex.identity.models import RefreshToken
from apex.kit.digest import sha256_hex
from apex.kit.ids import new_id


@dataclass(frozen=True, slots=True)
class Rotation:
    """The outcome of presenting a refresh token. `token` is None when it was refused;
    `reused` tells that the refusal revoked the token's whole family."""

    token: str | None
    row: RefreshToken | None
    reused: bool = False


async def issue(
    session: AsyncSession,
    *,
    user_id: uuid.UUID,
    organization_id: uuid.UUID,
    family_id: uuid.UUID | None,
    now: datetime,
    ttl_seconds: int,
) -> tuple[str, RefreshToken]:
    raw = secrets.token_urlsafe(32)
    row = RefreshToken(
        family_id=family_id or new_id(),
        user_id=user_id,
        organization_id=organization_id,
        token_hash=sha256_hex(raw),
        expires_at=now + timedelta(seconds=ttl_seconds),
    )
    session.add(row)
    await session.flush()
    return raw, row


async def revoke_family(session: AsyncSession, family_id: uuid.UUID, now: datetime) -> None:
    await session.execute(
        update(RefreshToken)
        .where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=now)
    )


async def rotate(session: AsyncSession, raw: str, *, now: datetime, ttl_seconds: int) -> Rotation:
    row = await session.scalar(
        select(RefreshToken).where(RefreshToken.token_hash == sha256_hex(raw)).with_for_update()
    )
    if row is None or row.revoked_at is not None or row.expires_at <= now:
        return Rotation(None, None)
    if row.used_at is not None:
        await revoke_family(session, row.family_id, now)
        return Rotation(None, row, reused=True)
    row.used_at = now
    token, new_row = await issue(
        session,
        user_id=row.user_id,
        organization_id=row.organization_id,
        family_id=row.family_id,
        now=now,
        ttl_seconds=ttl_seconds,
    )
    return Rotation(token, new_row)


async def revoke_user(session: AsyncSession, user_id: uuid.UUID, now: datetime) -> None:
    """Every refresh token of the user, in every family (log out everywhere)."""
    await session.execute(
        update(RefreshToken)
        .where(RefreshToken.user_id == user_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=now)
    )
