"""REST reads of threads: what a client loads when it opens a thread, or when `resume`
answered `recovered: false` (the WebSocket gateway carries everything live)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request

from apex.chat import service
from apex.chat.schemas import ChannelPositionOut, MessageOut, ThreadHistoryOut, ThreadOut
from apex.identity.deps import Principal, RequirePermission
from apex.kit.channels import thread_channel
from apex.kit.deps import SessionDep

router = APIRouter(prefix="/api/v1", tags=["chat"])
Reader = Annotated[Principal, RequirePermission("reports:read")]


@router.get("/threads", response_model=list[ThreadOut])
async def list_threads(principal: Reader, session: SessionDep) -> list[ThreadOut]:
    """The organisation's latest 100 threads, most recently active first."""
    threads = await service.latest_threads(session, principal.organization_id)
    return [ThreadOut.model_validate(thread) for thread in threads]


@router.get("/threads/{thread_id}/messages", response_model=ThreadHistoryOut)
async def thread_history(
    thread_id: uuid.UUID,
    request: Request,
    principal: Reader,
    session: SessionDep,
    before_seq: Annotated[int | None, Query(ge=1, description="Only messages before it.")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> ThreadHistoryOut:
    """The thread's last `limit` messages (before `before_seq`), oldest first, and where
    its live channel stands. The position is read first: an event after it may also be in
    the history, never missing from both (a client drops events it already has by id)."""
    channels = request.app.state.channels
    channel = thread_channel(thread_id)
    thread = await service.thread_of(session, principal.organization_id, thread_id)
    live = ChannelPositionOut(
        channel=channel, seq=await channels.last_seq(channel), epoch=await channels.epoch(channel)
    )
    messages = await service.history(session, thread, before_seq, limit)
    return ThreadHistoryOut(
        thread=ThreadOut.model_validate(thread),
        messages=[MessageOut.model_validate(message) for message in messages],
        live=live,
    )
