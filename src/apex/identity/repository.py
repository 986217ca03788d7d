from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from apex.identity.models import ApiKey, Membership, Organization, User
from apex.kit.repository import Repository


class UserRepository(Repository[User]):
    model = User

    async def get_by_email(self, email: str) -> User | None:
        result: User | None = await self.session.scalar(select(User).where(User.email == email))
        return result


class OrganizationRepository(Repository[Organization]):
    model = Organization

    async def by_slug(self, slug: str) -> Organization | None:
        result: Organization | None = await self.session.scalar(
            select(Organization).where(Organization.slug == slug)
        )
        return result

    async def all_ids(self) -> list[uuid.UUID]:
        return list(
            (await self.session.scalars(select(Organization.id).order_by(Organization.id))).all()
        )


class MembershipRepository(Repository[Membership]):
    model = Membership

    async def for_user(self, user_id: uuid.UUID) -> Sequence[Membership]:
        statement = (
            select(Membership).where(Membership.user_id == user_id).order_by(Membership.created_at)
        )
        return (await self.session.scalars(statement)).all()

    async def with_organization_names(
        self, user_id: uuid.UUID
    ) -> Sequence[tuple[uuid.UUID, str, str]]:
        """(organisation id, organisation name, role) of each membership, oldest first."""
        statement = (
            select(Membership.organization_id, Organization.name, Membership.role)
            .join(Organization, Organization.id == Membership.organization_id)
            .where(Membership.user_id == user_id)
            .order_by(Membership.created_at)
        )
        return [(row[0], row[1], row[2]) for row in (await self.session.execute(statement)).all()]

    async def role_of(self, user_id: uuid.UUID, organization_id: uuid.UUID) -> str | None:
        statement = select(Membership.role).where(
            Membership.user_id == user_id, Membership.organization_id == organization_id
        )
        role: str | None = await self.session.scalar(statement)
        return role


class MemberRepository(Repository[Membership]):
    """Memberships seen from an organisation: every query is scoped to that organisation."""

    model = Membership

    def __init__(self, session: AsyncSession, organization_id: uuid.UUID) -> None:
        super().__init__(session)
        self.organization_id = organization_id

    async def all(self) -> Sequence[tuple[Membership, str]]:
        statement = (
            select(Membership, User.email)
            .join(User, User.id == Membership.user_id)
            .where(Membership.organization_id == self.organization_id)
            .order_by(Membership.created_at)
        )
        return [(row[0], row[1]) for row in (await self.session.execute(statement)).all()]

    async def of_user(self, user_id: uuid.UUID, *, lock: bool = False) -> Membership | None:
        statement = select(Membership).where(
            Membership.organization_id == self.organization_id, Membership.user_id == user_id
        )
        if lock:
            statement = statement.with_for_update()
        result: Membership | None = await self.session.scalar(statement)
        return result

    async def member_count(self) -> int:
        return await self.count(Membership.organization_id == self.organization_id)

    async def owner_count(self) -> int:
        """Owners of the organisation, with their rows locked so two demotions cannot race."""
        statement = (
            select(Membership.id)
            .where(Membership.organization_id == self.organization_id, Membership.role == "owner")
            .with_for_update()
        )
        return len((await self.session.scalars(statement)).all())


class ApiKeyRepository(Repository[ApiKey]):
    """API keys of one organisation (lookup by prefix is the only unscoped query: the key
    itself names its organisation)."""

    model = ApiKey

    def __init__(self, session: AsyncSession, organization_id: uuid.UUID | None) -> None:
        super().__init__(session)
        self.organization_id = organization_id

    async def all(self) -> Sequence[ApiKey]:
        statement = (
            select(ApiKey)
            .where(ApiKey.organization_id == self.organization_id)
            .order_by(ApiKey.created_at)
        )
        return (await self.session.scalars(statement)).all()

    async def of_organization(self, key_id: uuid.UUID) -> ApiKey | None:
        statement = select(ApiKey).where(
            ApiKey.id == key_id, ApiKey.organization_id == self.organization_id
        )
        result: ApiKey | None = await self.session.scalar(statement)
        return result

    async def by_prefix(self, prefix: str) -> ApiKey | None:
        result: ApiKey | None = await self.session.scalar(
            select(ApiKey).where(ApiKey.prefix == prefix)
        )
        return result
