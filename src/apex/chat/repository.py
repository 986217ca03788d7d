from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import bindparam, func, select, update

from apex.chat.models import Message, Thread
from apex.kit.repository import Repository
from apex.kit.sql import greatest_of

# Built once: constructing the statement cost more than running it (a chat message's hot path).
_TAKE_NEXT_SEQ = (
    update(Thread)
    .where(Thread.id == bindparam("thread"), Thread.organization_id == bindparam("organization"))
    .values(
        last_seq=greatest_of(
            Thread.last_seq,
            select(func.coalesce(func.max(Message.seq), 0))
            .where(Message.thread_id == Thread.id)
            .scalar_subquery(),
        )
        + 1,
        updated_at=bindparam("now"),
    )
    .returning(Thread.last_seq)
    .execution_options(synchronize_session=False)
)


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

    async def take_next_seq(
        self, organization_id: uuid.UUID, thread_id: uuid.UUID, now: datetime
    ) -> int | None:
        """The seq of the organisation's thread's next message (None: no such thread), in
        one statement. Raising `last_seq` locks the thread's row until the transaction
        ends, so writers of one thread (people on several instances, a run's answer) take
        turns instead of colliding on the unique (thread_id, seq) key: a writer that waited
        reads the raised value. The thread's last stored message counts too, for messages
        of writers that do not keep `last_seq` (the version before it, in a rolling
        deploy; docs/migrations.md)."""
        parameters = {"thread": thread_id, "organization": organization_id, "now": now}
        seq: int | None = (
            await self.session.execute(_TAKE_NEXT_SEQ, parameters)
        ).scalar_one_or_none()
        return seq


class MessageRepository(Repository[Message]):
    model = Message

    async def history(
        self, thread_id: uuid.UUID, before_seq: int | None, limit: int
    ) -> Sequence[Message]:
        """The thread's last `limit` messages before `before_seq` (all: None), oldest first."""
        statement = select(Message).where(Message.thread_id == thread_id)
        if before_seq is not None:
            statement = statement.where(Message.seq < before_seq)
        newest = await self.session.scalars(statement.order_by(Message.seq.desc()).limit(limit))
        return list(reversed(newest.all()))
