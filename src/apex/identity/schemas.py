from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from apex.identity.models import Role
from apex.kit.text import Text

Email = Annotated[
    Text,
    StringConstraints(
        strip_whitespace=True,
        to_lower=True,
        max_length=320,
        pattern=r"^[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f]+\.[^@\s\x00-\x1f\x7f]+$",
    ),
]
Slug = Annotated[Text, StringConstraints(pattern=r"^[a-z0-9](?:[a-z0-9-]{0,98}[a-z0-9])?$")]


class SignupRequest(BaseModel):
    email: Email
    password: Text = Field(min_length=12, max_length=256)
    display_name: Text | None = Field(default=None, max_length=200)
    organization_name: Text = Field(min_length=1, max_length=200)
    organization_slug: Slug | None = Field(
        default=None, description="URL name of the organisation; derived from its name if absent."
    )


class MailSent(BaseModel):
    """The same answer whether or not an account uses the address."""

    email: str
    detail: str


class TokenIn(BaseModel):
    token: Text = Field(min_length=20, max_length=200)


class PasswordResetRequest(BaseModel):
    email: Email


class PasswordResetConfirm(BaseModel):
    token: Text = Field(min_length=20, max_length=200)
    password: Text = Field(min_length=12, max_length=256)


class LoginRequest(BaseModel):
    email: Email
    password: Text = Field(min_length=1, max_length=256)
    organization_id: uuid.UUID | None = Field(
        default=None, description="The organisation to act for; default: the first one joined."
    )


class TokenResponse(BaseModel):
    access_token: str
    refresh_token: str
    token_type: str = "bearer"  # noqa: S105 (the OAuth token type, not a secret)
    expires_in: int
    user_id: uuid.UUID
    organization_id: uuid.UUID


class RefreshRequest(BaseModel):
    refresh_token: Text = Field(min_length=20, max_length=200)


class MemberOut(BaseModel):
    user_id: uuid.UUID
    email: str
    role: Role


class RoleChange(BaseModel):
    role: Role


class NewApiKey(BaseModel):
    name: Text = Field(min_length=1, max_length=100)
    permissions: list[Text] = Field(min_length=1, description="Permission names, e.g. usage:write.")


class ApiKeyOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    prefix: str
    permissions: list[str]
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class NewApiKeyOut(ApiKeyOut):
    key: str = Field(description="The whole key. Shown once; Apex keeps only its hash.")


class SessionOut(BaseModel):
    id: str = Field(description="The session's public id (never the cookie value).")
    user_id: uuid.UUID
    organization_id: uuid.UUID
    csrf_token: str = Field(description="Send as X-CSRF-Token with state-changing requests.")


class SwitchOrganization(BaseModel):
    model_config = ConfigDict(extra="forbid")

    organization_id: uuid.UUID = Field(description="One of your memberships (GET /users/me).")


class ProviderOut(BaseModel):
    name: str = Field(description="Sign in at GET /api/v1/auth/oidc/{name}/login.")
    display_name: str


class SessionToken(BaseModel):
    """A short-lived access token for this browser session's WebSocket (`/ws` takes tokens,
    not cookies): ask for a new one before `expires_in` runs out, and after a reconnect."""

    access_token: str
    token_type: str = "bearer"  # noqa: S105 (the OAuth token type, not a secret)
    expires_in: int


class SessionInfo(BaseModel):
    id: str
    user_agent: str
    created_at: datetime
    last_seen: datetime


class NewInvitation(BaseModel):
    email: Email
    role: Role = Role.MEMBER


class InvitationOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    email: str
    role: Role
    expires_at: datetime


class NewInvitationOut(InvitationOut):
    token: str = Field(description="Send it to the invitee; shown once.")


class OrganizationOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    slug: str
    tier: str


class OrganizationUpdate(BaseModel):
    name: Text = Field(min_length=1, max_length=200)


class MembershipOut(BaseModel):
    organization_id: uuid.UUID
    organization_name: str
    role: str


class UserOut(BaseModel):
    id: uuid.UUID
    email: str
    display_name: str | None
    memberships: list[MembershipOut]
