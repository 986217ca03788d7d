"""Channels: ordered, replayable event logs in Redis that every instance can follow.

A channel (`user:<id>`, `thread:<id>`) is a Redis Stream whose entry ids are the channel's
sequence numbers (`<seq>-0`, from 1), so "everything after seq N" is one XRANGE. One Lua
script appends an event and publishes it on the channel's Pub/Sub subject in the same
atomic step: the order of `seq` is the order every subscriber sees.

Each channel has an *epoch*, a random token set when its first event is written. A client
resuming with another epoch (Redis lost its data: a flush, a failover without persistence)
cannot be told what it missed and must reload over REST; so can one whose last seq has been
trimmed out of the history (`HISTORY` events are kept). Writers (the agents, the chat
service) publish here and never import the WebSocket gateway, which only follows channels.
"""

from __future__ import annotations

import json
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Any

from redis.asyncio import Redis

from apex.kit.ids import new_id

HISTORY = 10_000  # events kept per channel for resume (approximately: MAXLEN ~)
TTL_SECONDS = 7 * 86_400  # an idle channel's history expires
PREFIX = "apex:ch"

# KEYS: stream, seq counter, epoch. ARGV: subject, data, new epoch, history, ttl.
_PUBLISH = """
local epoch = redis.call('GET', KEYS[3])
if not epoch then
  epoch = ARGV[3]
  redis.call('SET', KEYS[3], epoch)
end
local seq = redis.call('INCR', KEYS[2])
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[4], seq .. '-0', 'data', ARGV[2])
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[5]) end
redis.call('PUBLISH', ARGV[1], epoch .. ' ' .. seq .. ' ' .. ARGV[2])
return {seq, epoch}
"""


def user_channel(user_id: uuid.UUID | str) -> str:
    return f"user:{user_id}"


def thread_channel(thread_id: uuid.UUID | str) -> str:
    return f"thread:{thread_id}"


def envelope(
    kind: str, payload: dict[str, Any], now: datetime, *, reply_to: str | None = None, **extra: Any
) -> dict[str, Any]:
    """A server frame of the WebSocket protocol (BRIEF §4): `type`, `id`, `seq` (the
    channel's, added when it is sent; None for a direct answer), `ts`, `payload`, and
    `thread_id` / `run_id` / `reply_to` where they apply."""
    frame: dict[str, Any] = {
        "type": kind,
        "id": str(new_id()),
        "seq": None,
        "ts": now.isoformat(),
        "payload": payload,
    }
    if reply_to is not None:
        frame["reply_to"] = reply_to
    frame.update({key: value for key, value in extra.items() if value is not None})
    return frame


def subject(channel: str) -> str:
    """The Pub/Sub subject live events of a channel are published on."""
    return f"{PREFIX}:live:{channel}"


def _keys(channel: str) -> list[str]:
    return [f"{PREFIX}:{channel}:log", f"{PREFIX}:{channel}:seq", f"{PREFIX}:{channel}:epoch"]


@dataclass(frozen=True)
class Event:
    channel: str
    seq: int
    epoch: str
    data: dict[str, Any]

    @cached_property
    def frame(self) -> str:
        """The event as sent to a client, encoded once: every follower on an instance
        gets the same text (the hub hands them one Event)."""
        framed = {**self.data, "seq": self.seq, "channel": self.channel, "epoch": self.epoch}
        return json.dumps(framed, default=str)


def parse_live(channel: str, message: bytes | str) -> Event:
    """An event as received on the channel's Pub/Sub subject."""
    text = message.decode() if isinstance(message, bytes) else message
    epoch, seq, data = text.split(" ", 2)
    return Event(channel, int(seq), epoch, json.loads(data))


class Channels:
    def __init__(self, redis: Redis, *, history: int = HISTORY) -> None:
        self.redis = redis
        self.history = history
        self._publish = redis.register_script(_PUBLISH)

    async def publish(self, channel: str, data: dict[str, Any]) -> Event:
        """Append an event to the channel and send it to its live subscribers."""
        encoded = json.dumps(data, separators=(",", ":"), default=str)
        seq, epoch = await self._publish(
            keys=_keys(channel),
            args=[subject(channel), encoded, secrets.token_hex(8), self.history, TTL_SECONDS],
        )
        return Event(channel, int(seq), _text(epoch), data)

    async def epoch(self, channel: str) -> str | None:
        found = await self.redis.get(_keys(channel)[2])
        return _text(found) if found is not None else None

    async def last_seq(self, channel: str) -> int:
        return int(await self.redis.get(_keys(channel)[1]) or 0)

    async def after(self, channel: str, seq: int, limit: int = HISTORY) -> list[Event] | None:
        """The events after `seq`, in order; None when they cannot all be replayed: the
        history no longer reaches back to `seq + 1` (trimmed, expired or lost) or `seq` is
        beyond anything this channel has (its data was lost and it started again)."""
        epoch = await self.epoch(channel)
        if epoch is None:
            return [] if seq == 0 else None
        last = await self.last_seq(channel)
        if seq >= last:
            return [] if seq == last else None
        entries: Any = await self.redis.xrange(
            _keys(channel)[0], min=f"({seq}-0", max="+", count=limit
        )
        events = [
            Event(channel, int(str(entry_id).split("-")[0]), epoch, json.loads(fields["data"]))
            for entry_id, fields in entries
        ]
        if not events or events[0].seq != seq + 1:
            return None
        return events


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
