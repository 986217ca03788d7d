from __future__ import annotations

import uuid

from sqlalchemy import func, select

from apex.kit.repository import Repository
from apex.realtime.models import Message, Thread


class ThreadRepository(Repository[Thread]):
    model = Thread


class MessageRepository(Repository[Message]):
    model = Message

    async def next_seq(self, thread_id: uuid.UUID) -> int:
        last = await self.session.scalar(
            select(func.max(Message.seq)).where(Message.thread_id == thread_id)
        )
        return int(last or 0) + 1
