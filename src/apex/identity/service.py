"""Sign-up, login and the organisation reads every request needs (cached)."""

from __future__ import annotations

import re
import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from apex.chat.service import start_thread
from apex.identity.models import Membership, Organization, Role, User
from apex.identity.passwords import verify_password
from apex.identity.repository import (
    MemberRepository,
    MembershipRepository,
    OrganizationRepository,
    UserRepository,
)
from apex.kit.cache import TwoLevelCache, invalidate_after_commit
from apex.kit.errors import Conflict, Forbidden, NotFound, Unauthorized
from apex.kit.failpoints import NO_FAILPOINTS, Failpoints
from apex.kit.outbox import enqueue

WELCOME = (
    "Welcome to Apex. Send your LLM call records and ask where the money goes: "
    "I will break the spend down and show what can be saved."
)


def slugify(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:90]
    return slug or "org"


async def create_account(
    session: AsyncSession,
    *,
    email: str,
    display_name: str | None,
    password_hash: str | None,
    organization_name: str,
    organization_slug: str | None = None,
    failpoints: Failpoints = NO_FAILPOINTS,
) -> tuple[User, Organization]:
    """One unit: user → organisation (Free) → owner membership → welcome thread → message,
    and a `user.signed_up` event that leaves only if all of it commits."""
    user = await UserRepository(session).add(
        User(email=email, display_name=display_name, password_hash=password_hash)
    )
    failpoints.hit("signup.after_user")
    slug = organization_slug or f"{slugify(organization_name)}-{uuid.uuid4().hex[:8]}"
    organization = await OrganizationRepository(session).add(
        Organization(name=organization_name, slug=slug)
    )
    await MembershipRepository(session).add(
        Membership(organization_id=organization.id, user_id=user.id, role=Role.OWNER.value)
    )
    failpoints.hit("signup.after_membership")
    await start_thread(
        session,
        organization_id=organization.id,
        created_by_id=user.id,
        title="Welcome",
        first_message=WELCOME,
    )
    failpoints.hit("signup.after_thread")
    payload = {
        "user_id": str(user.id),
        "organization_id": str(organization.id),
        "tier": organization.tier,
    }
    await enqueue(session, "user.signed_up", payload)
    return user, organization


async def account_for_identity(
    session: AsyncSession, email: str, name: str | None
) -> tuple[User, uuid.UUID]:
    """The user a verified email belongs to (linking a later login to the same account), or
    a new one with a personal organisation on the Free tier."""
    user = await UserRepository(session).get_by_email(email)
    if user is None:
        user, organization = await create_account(
            session,
            email=email,
            display_name=name,
            password_hash=None,
            organization_name=f"{name or email.split('@')[0]}'s organisation",
        )
        return user, organization.id
    if not user.is_active:
        raise Unauthorized("This account is disabled.")
    memberships = await MembershipRepository(session).for_user(user.id)
    if not memberships:
        raise Unauthorized("This account belongs to no organisation.")
    return user, memberships[0].organization_id


async def authenticate(
    session: AsyncSession, email: str, password: str, organization_id: uuid.UUID | None = None
) -> tuple[User, uuid.UUID]:
    """The user and the organisation their token acts for: `organization_id` if they are a
    member of it, else the first organisation they joined."""
    user = await UserRepository(session).get_by_email(email)
    if not await verify_password(user.password_hash if user else None, password) or user is None:
        raise Unauthorized("Wrong email or password.")
    if not user.is_active:
        raise Unauthorized("This account is disabled.")
    memberships = await MembershipRepository(session).for_user(user.id)
    if not memberships:
        raise Unauthorized("This account belongs to no organisation.")
    if organization_id is None:
        return user, memberships[0].organization_id
    if organization_id not in {m.organization_id for m in memberships}:
        raise Forbidden("You are not a member of that organisation.", field="organization_id")
    return user, organization_id


def organization_key(organization_id: uuid.UUID) -> str:
    return f"org:{organization_id}"


def role_key(user_id: uuid.UUID, organization_id: uuid.UUID) -> str:
    return f"role:{user_id}:{organization_id}"


async def organization_view(
    session: AsyncSession, cache: TwoLevelCache, organization_id: uuid.UUID
) -> dict[str, Any] | None:
    async def load() -> dict[str, Any] | None:
        org = await OrganizationRepository(session).get(organization_id)
        if org is None:
            return None
        return {"id": str(org.id), "name": org.name, "slug": org.slug, "tier": org.tier}

    # Read once per unit of work: the plan check and the endpoint both want it.
    seen: dict[uuid.UUID, dict[str, Any] | None] = session.info.setdefault(_VIEWS, {})
    if organization_id not in seen:
        seen[organization_id] = await cache.get(
            organization_key(organization_id), load, session=session
        )
    return seen[organization_id]


_VIEWS = "organization_views"


async def role_in(
    session: AsyncSession, cache: TwoLevelCache, user_id: uuid.UUID, organization_id: uuid.UUID
) -> str | None:
    async def load() -> str | None:
        return await MembershipRepository(session).role_of(user_id, organization_id)

    result: str | None = await cache.get(role_key(user_id, organization_id), load, session=session)
    return result


async def rename_organization(
    session: AsyncSession, organization_id: uuid.UUID, name: str
) -> Organization:
    org = await OrganizationRepository(session).get_or_raise(organization_id)
    org.name = name
    await session.flush()
    session.info.get(_VIEWS, {}).pop(organization_id, None)
    invalidate_after_commit(session, organization_key(organization_id))
    return org


async def change_role(
    session: AsyncSession,
    organization_id: uuid.UUID,
    *,
    actor_role: str,
    user_id: uuid.UUID,
    role: Role,
) -> Membership:
    members = MemberRepository(session, organization_id)
    membership = await _member_to_change(members, user_id, actor_role)
    check_may_grant(actor_role, role)
    if role != Role.OWNER:
        await _keep_an_owner(members, membership)
    membership.role = role.value
    await session.flush()
    invalidate_after_commit(session, role_key(user_id, organization_id))
    return membership


async def remove_member(
    session: AsyncSession, organization_id: uuid.UUID, *, actor_role: str, user_id: uuid.UUID
) -> None:
    members = MemberRepository(session, organization_id)
    membership = await _member_to_change(members, user_id, actor_role)
    await _keep_an_owner(members, membership)
    await members.delete(membership)
    invalidate_after_commit(session, role_key(user_id, organization_id))


async def _member_to_change(
    members: MemberRepository, user_id: uuid.UUID, actor_role: str
) -> Membership:
    """The membership `actor_role` may change, locked for the rest of the transaction."""
    membership = await members.of_user(user_id, lock=True)
    if membership is None:
        raise NotFound("No such member.")
    check_may_grant(actor_role, Role(membership.role))
    return membership


async def _keep_an_owner(members: MemberRepository, membership: Membership) -> None:
    """Refuse to take the owner role from the organisation's last owner."""
    if membership.role == Role.OWNER and await members.owner_count() <= 1:
        raise Conflict("An organisation keeps at least one owner: promote another member first.")


def check_may_grant(actor_role: str, role: Role) -> None:
    """Only owners grant, change or take away the owner role."""
    if role == Role.OWNER and actor_role != Role.OWNER:
        raise Forbidden("Only an owner can grant, change or remove the owner role.")


async def is_operator(
    session: AsyncSession, user_id: uuid.UUID, operator_emails: list[str]
) -> bool:
    """Whether the person runs this installation (their address is in APEX_OPERATOR_EMAILS)."""
    if not operator_emails:
        return False
    user = await UserRepository(session).get(user_id)
    return user is not None and user.email.lower() in operator_emails
