"""Typed repository base: all SQL of a domain lives in its repository, built on this."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, ClassVar, Generic, TypeVar

from sqlalchemy import ColumnElement, Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from apex.kit.errors import NotFound
from apex.kit.models import Base

ModelT = TypeVar("ModelT", bound=Base)


class Repository(Generic[ModelT]):
    """CRUD over one model. Subclasses set `model` and add the queries their domain needs."""

    model: ClassVar[type[Any]]

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    def select(self) -> Select[ModelT]:
        return select(self.model)

    async def get(self, id: uuid.UUID) -> ModelT | None:
        result: ModelT | None = await self.session.get(self.model, id)
        return result

    async def get_or_raise(self, id: uuid.UUID, *, lock: bool = False) -> ModelT:
        found = await (self.locked(id) if lock else self.get(id))
        if found is None:
            raise NotFound(f"{self.model.__name__} {id} was not found.")
        return found

    async def locked(self, id: uuid.UUID) -> ModelT | None:
        """The row, locked until the transaction ends (PostgreSQL; SQLite has one writer),
        as it is now: `populate_existing` refreshes a copy the session read before the lock."""
        statement = (
            self.select()
            .where(self.model.id == id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        result: ModelT | None = await self.session.scalar(statement)
        return result

    async def add(self, instance: ModelT) -> ModelT:
        self.session.add(instance)
        await self.session.flush()
        return instance

    async def delete(self, instance: ModelT) -> None:
        await self.session.delete(instance)
        await self.session.flush()

    async def list(
        self, *where: ColumnElement[bool], limit: int = 100, offset: int = 0
    ) -> Sequence[ModelT]:
        statement = self.select().where(*where).limit(limit).offset(offset)
        return (await self.session.scalars(statement)).all()

    async def count(self, *where: ColumnElement[bool]) -> int:
        statement = select(func.count()).select_from(self.model).where(*where)
        return int(await self.session.scalar(statement) or 0)
