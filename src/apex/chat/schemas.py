from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class ThreadOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    title: str
    created_at: datetime
    updated_at: datetime


class MessageOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    thread_id: uuid.UUID
    seq: int
    role: str
    content: str
    author_id: uuid.UUID | None
    created_at: datetime


class ChannelPositionOut(BaseModel):
    """Where the thread's live channel is: follow it from here over `/ws` (`resume` with
    this seq and epoch) and nothing between this history and the live events is missed."""

    channel: str
    seq: int
    epoch: str | None


class ThreadHistoryOut(BaseModel):
    thread: ThreadOut
    messages: list[MessageOut] = Field(description="Oldest first.")
    live: ChannelPositionOut
