from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from apex.chat.models import Message, MessageRole, Thread
from apex.chat.repository import MessageRepository, ThreadRepository
from apex.kit.errors import NotFound


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
        Thread(
            organization_id=organization_id, created_by_id=created_by_id, title=title, last_seq=1
        )
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


async def create_thread(
    session: AsyncSession, *, organization_id: uuid.UUID, created_by_id: uuid.UUID, title: str
) -> Thread:
    return await ThreadRepository(session).add(
        Thread(organization_id=organization_id, created_by_id=created_by_id, title=title)
    )


async def thread_of(
    session: AsyncSession, organization_id: uuid.UUID, thread_id: uuid.UUID
) -> Thread:
    """The organisation's thread; another organisation's is as unknown as a missing one."""
    thread = await ThreadRepository(session).of_organization(organization_id, thread_id)
    if thread is None:
        raise NotFound("No thread with this id.")
    return thread


async def post_message(
    session: AsyncSession,
    *,
    organization_id: uuid.UUID,
    thread_id: uuid.UUID,
    author_id: uuid.UUID | None,
    role: MessageRole,
    content: str,
    now: datetime,
) -> Message:
    """The next message of the organisation's thread; another organisation's thread is as
    unknown as a missing one. Two statements: taking the seq (which serialises the
    thread's writers and stamps the thread's `updated_at`), then the insert."""
    seq = await ThreadRepository(session).take_next_seq(organization_id, thread_id, now)
    if seq is None:
        raise NotFound("No thread with this id.")
    return await MessageRepository(session).add(
        Message(
            thread_id=thread_id,
            organization_id=organization_id,
            author_id=author_id,
            seq=seq,
            role=role.value,
            content=content,
            created_at=now,
            updated_at=now,
        )
    )


THREADS_LISTED = 100


async def latest_threads(session: AsyncSession, organization_id: uuid.UUID) -> Sequence[Thread]:
    return await ThreadRepository(session).latest(organization_id, THREADS_LISTED)


async def history(
    session: AsyncSession, thread: Thread, before_seq: int | None, limit: int
) -> Sequence[Message]:
    return await MessageRepository(session).history(thread.id, before_seq, limit)


async def delete_thread(session: AsyncSession, thread: Thread) -> None:
    await ThreadRepository(session).delete(thread)
