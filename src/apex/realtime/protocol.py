"""The wire protocol of `/ws` (BRIEF §4): envelopes, client frames, close codes.

Every server frame is an envelope `{"type", "id", "seq", "ts", "payload"}`, plus `channel`
and `epoch` for events of a channel (their `seq` is the channel's) and `thread_id` /
`run_id` where they apply. Direct answers to the client (`pong`, `thread_list`, `error`, ...)
carry `seq: null`: they are not part of any channel and are not replayed.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

POLICY = 1008  # bad, expired or revoked token; a thread of another organisation
SERVER_ERROR = 1011
TRY_AGAIN_LATER = 1013  # draining, or a consumer too slow to keep up
RATE_LIMITED = 4429

AUTH_DEADLINE_SECONDS = 5.0
MAX_FRAME_BYTES = 64 * 1024
MAX_MESSAGE_CHARS = 20_000
SUBPROTOCOL_PREFIX = "bearer."

ClientType = Literal[
    "auth", "user_message", "start_agent", "stop_agent", "create_thread", "switch_thread",
    "list_threads", "rename_thread", "delete_thread", "get_thread_history", "resume", "ping",
]  # fmt: skip


class ClientFrame(BaseModel):
    """A frame from the client: its type, an optional id echoed in the answer, a payload."""

    model_config = ConfigDict(extra="forbid")

    type: ClientType
    id: str | None = Field(default=None, max_length=100)
    token: str | None = Field(default=None, max_length=8192)  # `auth` only
    payload: dict[str, Any] = Field(default_factory=dict)


class ChannelPosition(BaseModel):
    seq: int = Field(ge=0)
    epoch: str | None = Field(default=None, max_length=64)


class ResumeIn(BaseModel):
    channels: dict[str, ChannelPosition] = Field(max_length=50)


class ThreadIn(BaseModel):
    thread_id: uuid.UUID


class UserMessageIn(ThreadIn):
    content: str = Field(min_length=1, max_length=MAX_MESSAGE_CHARS)
    start_agent: bool = Field(default=True, description="Start an agent run on the message.")


class StartAgentIn(ThreadIn):
    question: str = Field(min_length=1, max_length=4000)


class StopAgentIn(BaseModel):
    run_id: uuid.UUID


class CreateThreadIn(BaseModel):
    title: str = Field(default="New thread", min_length=1, max_length=200)


class RenameThreadIn(ThreadIn):
    title: str = Field(min_length=1, max_length=200)


class HistoryIn(ThreadIn):
    before_seq: int | None = Field(default=None, ge=1)
    limit: int = Field(default=50, ge=1, le=200)
