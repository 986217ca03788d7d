"""Invitations: join an organisation with a role, for whoever proves the invited email.

The inviter gets the token once (to send on: Apex does not send mail yet); only its SHA-256
is stored. Accepting needs a logged-in account with the invited email, before expiry, once.
"""

from __future__ import annotations

import secrets
import uuid
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from apex.billing.plans import plan_for
from apex.identity.models import Invitation, Membership, Role
from apex.identity.repository import MemberRepository, OrganizationRepository, UserRepository
from apex.identity.service import role_key
from apex.kit.cache import invalidate_after_commit
from apex.kit.digest import sha256_hex
from apex.kit.errors import Conflict, Forbidden, NotFound, QuotaExceeded
from apex.kit.repository import Repository

INVITATION_DAYS = 7


class InvitationRepository(Repository[Invitation]):
    model = Invitation

    def __init__(self, session: AsyncSession, organization_id: uuid.UUID) -> None:
        super().__init__(session)
        self.organization_id = organization_id

    async def pending(self, now: datetime) -> list[Invitation]:
        statement = (
            select(Invitation)
            .where(
                Invitation.organization_id == self.organization_id,
                Invitation.accepted_at.is_(None),
                Invitation.revoked_at.is_(None),
                Invitation.expires_at > now,
            )
            .order_by(Invitation.created_at)
        )
        return list((await self.session.scalars(statement)).all())

    async def of_organization(self, invitation_id: uuid.UUID) -> Invitation | None:
        statement = select(Invitation).where(
            Invitation.id == invitation_id, Invitation.organization_id == self.organization_id
        )
        result: Invitation | None = await self.session.scalar(statement)
        return result


# --- seats: how many people the plan lets in (BRIEF §4b) ------------------------------------
# Checked with the organisation's row locked, so two additions at once cannot both take the
# last seat. Pending invitations hold a seat: an invitation nobody could accept is not sent.
async def ensure_free_seat(
    session: AsyncSession, organization_id: uuid.UUID, now: datetime, *, accepting: bool = False
) -> None:
    """Raise QuotaExceeded unless one more person fits the plan. `accepting`: the person
    holds a pending invitation already (their seat is counted among the invitations)."""
    organization = await OrganizationRepository(session).locked(organization_id)
    if organization is None:
        return
    plan = plan_for(organization.tier)
    if plan.seats is None:
        return
    members = await MemberRepository(session, organization_id).member_count()
    invited = len(await InvitationRepository(session, organization_id).pending(now))
    taken = members + invited - (1 if accepting else 0)
    if taken >= plan.seats:
        upgrade = plan.next_tier.value if plan.next_tier else None
        raise QuotaExceeded(
            f"Your plan has {plan.seats} seat{'s' if plan.seats != 1 else ''}, all taken "
            f"({members} members, {invited} pending invitations)"
            + (f"; the {upgrade.capitalize()} plan has more." if upgrade else "."),
            limit=plan.seats,
            upgrade=upgrade,
        )


def invitation_text(organization: str, role: str, token: str, expires_at: datetime) -> str:
    return (
        f"You have been invited to join {organization} on Apex as {role}.\n\n"
        "Sign in (or sign up with this email address), then accept the invitation:\n\n"
        "    POST /api/v1/invitations/accept\n"
        f'    {{"token": "{token}"}}\n\n'
        f"The invitation is valid until {expires_at:%Y-%m-%d %H:%M} UTC and works once.\n"
    )


async def invite(
    session: AsyncSession,
    organization_id: uuid.UUID,
    *,
    invited_by: uuid.UUID,
    email: str,
    role: Role,
    now: datetime,
) -> tuple[Invitation, str]:
    await ensure_free_seat(session, organization_id, now)
    token = secrets.token_urlsafe(32)
    invitation = Invitation(
        organization_id=organization_id,
        invited_by_id=invited_by,
        email=email,
        role=role.value,
        token_hash=sha256_hex(token),
        expires_at=now + timedelta(days=INVITATION_DAYS),
    )
    await InvitationRepository(session, organization_id).add(invitation)
    return invitation, token


async def revoke(
    session: AsyncSession, organization_id: uuid.UUID, invitation_id: uuid.UUID, now: datetime
) -> None:
    invitation = await InvitationRepository(session, organization_id).of_organization(invitation_id)
    if invitation is None or invitation.accepted_at is not None:
        raise NotFound("No such pending invitation.")
    invitation.revoked_at = invitation.revoked_at or now
    await session.flush()


async def accept(
    session: AsyncSession, token: str, *, user_id: uuid.UUID, now: datetime
) -> Membership:
    invitation = await session.scalar(
        select(Invitation).where(Invitation.token_hash == sha256_hex(token)).with_for_update()
    )
    if (
        invitation is None
        or invitation.accepted_at is not None
        or invitation.revoked_at is not None
        or invitation.expires_at <= now
    ):
        raise NotFound("This invitation is unknown, used, revoked or expired.")
    user = await UserRepository(session).get_or_raise(user_id)
    if user.email != invitation.email:
        raise Forbidden("This invitation is for another email address.")
    members = MemberRepository(session, invitation.organization_id)
    if await members.of_user(user_id) is not None:
        raise Conflict("You are already a member of this organisation.")
    await ensure_free_seat(session, invitation.organization_id, now, accepting=True)
    invitation.accepted_at = now
    membership = await members.add(
        Membership(
            organization_id=invitation.organization_id, user_id=user_id, role=invitation.role
        )
    )
    invalidate_after_commit(session, role_key(user_id, invitation.organization_id))
    return membership
