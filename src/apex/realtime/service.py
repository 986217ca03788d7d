from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from apex.realtime.models import Message, MessageRole, Thread
from apex.realtime.repository import MessageRepository, ThreadRepository


async def start_thread(
    session: AsyncSession,
    *,
    organization_id: uuid.UUID,
    created_by_id: uuid.UUID | None,
    title: str,
    first_message: str,
    role: MessageRole = MessageRole.ASSISTANT,
) -> tuple[Thread, Message]:
    """A new thread of the organisation with its first message (seq 1)."""
    thread = await ThreadRepository(session).add(
        Thread(organization_id=organization_id, created_by_id=created_by_id, title=title)
    )
    message = await MessageRepository(session).add(
        Message(
            thread_id=thread.id,
            organization_id=organization_id,
            author_id=created_by_id if role == MessageRole.USER else None,
            seq=1,
            role=role.value,
            content=first_message,
        )
    )
    return thread, message
