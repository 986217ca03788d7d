from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import func, select

from apex.chat.models import Message, Thread
from apex.kit.repository import Repository


class ThreadRepository(Repository[Thread]):
    model = Thread

    async def of_organization(
        self, organization_id: uuid.UUID, thread_id: uuid.UUID
    ) -> Thread | None:
        found: Thread | None = await self.session.scalar(
            select(Thread).where(Thread.id == thread_id, Thread.organization_id == organization_id)
        )
        return found

    async def latest(self, organization_id: uuid.UUID, limit: int) -> Sequence[Thread]:
        statement = (
            select(Thread)
            .where(Thread.organization_id == organization_id)
            .order_by(Thread.updated_at.desc(), Thread.id.desc())
            .limit(limit)
        )
        return (await self.session.scalars(statement)).all()


class MessageRepository(Repository[Message]):
    model = Message

    async def next_seq(self, thread_id: uuid.UUID) -> int:
        """The seq of the thread's next message. The thread's row is locked until the
        transaction ends, so writers of one thread (people on several instances, a run's
        answer) take turns instead of colliding on the unique (thread_id, seq) key."""
        await self.session.execute(
            select(Thread.id).where(Thread.id == thread_id).with_for_update()
        )
        last = await self.session.scalar(
            select(func.max(Message.seq)).where(Message.thread_id == thread_id)
        )
        return int(last or 0) + 1

    async def history(
        self, thread_id: uuid.UUID, before_seq: int | None, limit: int
    ) -> Sequence[Message]:
        """The thread's last `limit` messages before `before_seq` (all: None), oldest first."""
        statement = select(Message).where(Message.thread_id == thread_id)
        if before_seq is not None:
            statement = statement.where(Message.seq < before_seq)
        newest = await self.session.scalars(statement.order_by(Message.seq.desc()).limit(limit))
        return list(reversed(newest.all()))
