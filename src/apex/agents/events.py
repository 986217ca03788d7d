"""Run events: appended in order to one Redis Stream per run (`GET …/runs/{id}/events`),
and published on the channel of the run's thread, which the WebSocket gateway relays to
everyone following that thread on any instance (`apex.kit.channels`: the agents never
import the gateway).

Each stream entry has `type` and `payload` (JSON) and the stream id as its position. Streams
expire a day after their last event so they never outlive their use; the run's rows in the
database stay the record.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from redis.asyncio import Redis

from apex.kit.channels import Channels, envelope, thread_channel
from apex.kit.clock import Clock, SystemClock

EVENT_TYPES = frozenset(
    {
        "agent_started",
        "agent_thinking",
        "tool_executing",
        "tool_completed",
        "partial_result",
        "stream_chunk",
        "agent_completed",
        "agent_fallback",
        "agent_error",
        "final_report",
    }
)
STREAM_TTL_SECONDS = 86_400


def stream_key(run_id: uuid.UUID | str) -> str:
    return f"apex:run:{run_id}:events"


class RunEvents:
    def __init__(
        self,
        redis: Redis,
        run_id: uuid.UUID,
        thread_id: uuid.UUID | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.redis = redis
        self.clock = clock or SystemClock()
        self.key = stream_key(run_id)
        self.run_id = run_id
        self.thread_id = thread_id
        self.channels = Channels(redis)

    async def emit(self, kind: str, payload: dict[str, Any]) -> str:
        if kind not in EVENT_TYPES:
            raise ValueError(f"unknown event type {kind!r}")
        fields: Any = {"type": kind, "run_id": str(self.run_id), "payload": json.dumps(payload)}
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(self.key, fields)
            pipe.expire(self.key, STREAM_TTL_SECONDS)
            entry_id, _ = await pipe.execute()
        if self.thread_id is not None:
            frame = envelope(kind, payload, self.clock.now(), thread_id=str(self.thread_id),
                             run_id=str(self.run_id))  # fmt: skip
            await self.channels.publish(thread_channel(self.thread_id), frame)
        return str(entry_id)


async def read_events(
    redis: Redis, run_id: uuid.UUID, *, after: str = "-", limit: int = 1000
) -> list[dict[str, Any]]:
    start = "-" if after == "-" else f"({after}"
    entries: Any = await redis.xrange(stream_key(run_id), min=start, max="+", count=limit)
    return [
        {"id": entry_id, "type": fields["type"], "payload": json.loads(fields["payload"])}
        for entry_id, fields in entries
    ]
