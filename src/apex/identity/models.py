"""Organisations, users and the memberships that join them with a role."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, CheckConstraint, ForeignKey, String, Text, UniqueConstraint, true
from sqlalchemy.orm import Mapped, mapped_column

from apex.kit.models import Base, RecordModel, enum_check, utc_now


class Tier(enum.StrEnum):
    FREE = "free"
    EARLY = "early"
    MID = "mid"
    ENTERPRISE = "enterprise"


class Role(enum.StrEnum):
    """Ordered: each role holds every permission of the roles after it."""

    OWNER = "owner"
    ADMIN = "admin"
    MEMBER = "member"
    VIEWER = "viewer"


class Organization(RecordModel):
    __tablename__ = "organizations"
    __table_args__ = (CheckConstraint(enum_check("tier", Tier), name="tier"),)

    name: Mapped[str] = mapped_column(String(200))
    slug: Mapped[str] = mapped_column(String(100), unique=True)
    tier: Mapped[str] = mapped_column(
        String(20), default=Tier.FREE.value, server_default=Tier.FREE.value
    )


class User(RecordModel):
    __tablename__ = "users"

    email: Mapped[str] = mapped_column(String(320), unique=True)
    display_name: Mapped[str | None] = mapped_column(String(200))
    password_hash: Mapped[str | None] = mapped_column(String(255))
    is_active: Mapped[bool] = mapped_column(default=True, server_default=true())


class Membership(RecordModel):
    __tablename__ = "memberships"
    __table_args__ = (
        UniqueConstraint("organization_id", "user_id"),
        CheckConstraint(enum_check("role", Role), name="role"),
    )

    organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    role: Mapped[str] = mapped_column(String(20), default=Role.MEMBER.value)


class SigningKey(Base):
    """An RS256 key pair. The newest active key signs; retired keys still verify for the
    overlap window, so tokens issued before a rotation stay valid until they expire."""

    __tablename__ = "signing_keys"

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    algorithm: Mapped[str] = mapped_column(String(10), default="RS256")
    private_key_pem: Mapped[str] = mapped_column(
        Text, comment="PKCS8, encrypted with APEX_SECRET_KEY"
    )
    public_jwk: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    retired_at: Mapped[datetime | None]


class RefreshToken(RecordModel):
    """An opaque refresh token, stored as a SHA-256 hash. Each use rotates it within its
    family; presenting a used one revokes the whole family (it was stolen or replayed)."""

    __tablename__ = "refresh_tokens"

    family_id: Mapped[uuid.UUID] = mapped_column(index=True)
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE")
    )
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class ApiKey(RecordModel):
    """A machine credential of an organisation, limited to named permissions.

    The key is shown once (`apx_<prefix>_<secret>`); only its SHA-256 is stored, and the
    visible prefix identifies it in lists and logs.
    """

    __tablename__ = "api_keys"

    organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    created_by_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    permissions: Mapped[list[str]] = mapped_column(JSON)
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class Invitation(RecordModel):
    """An invitation to join an organisation with a role, for an email address. The token is
    given once to the inviter (to send on); only its SHA-256 is stored."""

    __tablename__ = "invitations"

    organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    invited_by_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    email: Mapped[str] = mapped_column(String(320))
    role: Mapped[str] = mapped_column(String(20))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    expires_at: Mapped[datetime]
    accepted_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class TokenPurpose(enum.StrEnum):
    VERIFY_SIGNUP = "verify_signup"
    RESET_PASSWORD = "reset_password"  # noqa: S105 (a purpose, not a password)


class EmailToken(RecordModel):
    """A single-use token mailed to an address to prove the reader holds it: a sign-up's
    verification (the account is created when it is used; `payload` keeps what the sign-up
    asked for, the password as its hash) or a password reset. Only its SHA-256 is stored."""

    __tablename__ = "email_tokens"
    __table_args__ = (CheckConstraint(enum_check("purpose", TokenPurpose), name="purpose"),)

    purpose: Mapped[str] = mapped_column(String(20))
    email: Mapped[str] = mapped_column(String(320), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]
