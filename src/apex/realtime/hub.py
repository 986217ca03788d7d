"""The hub: one per process. It follows the channels its connections are subscribed to on
Redis Pub/Sub (one connection for all of them) and hands each live event to those
connections' send queues; and it closes connections whose token was revoked anywhere.

Pub/Sub may drop a message (a reconnect to Redis); a connection notices the gap in `seq`
and fills it from the channel's history (`apex.kit.channels`), so delivery stays gapless.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from apex.identity.denylist import REVOKED_SUBJECT
from apex.kit.channels import PREFIX, Event, parse_live, subject

log = structlog.get_logger(__name__)
_LIVE = f"{PREFIX}:live:"


class Subscriber(Protocol):
    token_id: str | None

    def offer(self, event: Event) -> None: ...

    async def revoke(self) -> None: ...

    async def drain(self, deadline: float) -> None: ...


class Hub:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.pubsub = redis.pubsub()
        self.subscribers: dict[str, set[Subscriber]] = {}
        self.connections: set[Subscriber] = set()
        self._confirmed: dict[str, asyncio.Event] = {}
        self._task: asyncio.Task[None] | None = None
        self.draining = False  # SIGTERM: new connections are turned away

    async def start(self) -> None:
        await self._subscribe_subject(REVOKED_SUBJECT)
        self._task = asyncio.create_task(self._listen(), name="realtime-hub")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(RedisError):
            await self.pubsub.aclose()  # type: ignore[no-untyped-call]

    async def subscribe(self, channel: str, subscriber: Subscriber) -> None:
        """Follow `channel` for `subscriber`; returns once Redis confirmed the subscription,
        so an event published from now on reaches it (earlier ones are in the history)."""
        followers = self.subscribers.setdefault(channel, set())
        followers.add(subscriber)
        if len(followers) == 1:
            await self._subscribe_subject(subject(channel))
        else:
            confirmed = self._confirmed.get(subject(channel))
            if confirmed is not None:
                await confirmed.wait()

    async def unsubscribe(self, channel: str, subscriber: Subscriber) -> None:
        followers = self.subscribers.get(channel)
        if followers is None:
            return
        followers.discard(subscriber)
        if not followers:
            del self.subscribers[channel]
            self._confirmed.pop(subject(channel), None)
            with contextlib.suppress(RedisError):
                await self.pubsub.unsubscribe(subject(channel))

    async def _subscribe_subject(self, name: str) -> None:
        confirmed = self._confirmed.setdefault(name, asyncio.Event())
        await self.pubsub.subscribe(name)
        if self._task is None:  # the listener is not running yet: read the confirmation
            while not confirmed.is_set():
                await self._handle(await self.pubsub.get_message(timeout=1.0))
        else:
            await asyncio.wait_for(confirmed.wait(), timeout=10)

    async def _listen(self) -> None:
        while True:
            try:
                message = await self.pubsub.get_message(timeout=1.0)
            except RedisError as exc:  # Redis restarts: resubscribe, connections fill gaps
                log.warning("hub_redis_error", error=type(exc).__name__)
                await asyncio.sleep(0.5)
                continue
            await self._handle(message)

    async def _handle(self, message: dict[str, object] | None) -> None:
        if message is None:
            return
        kind, name = message.get("type"), str(message.get("channel"))
        if kind == "subscribe":
            self._confirmed.setdefault(name, asyncio.Event()).set()
            return
        if kind != "message":
            return
        data = message.get("data")
        assert isinstance(data, (str, bytes))
        if name == REVOKED_SUBJECT:
            await self._revoke(data.decode() if isinstance(data, bytes) else data)
            return
        channel = name.removeprefix(_LIVE)
        event = parse_live(channel, data)
        for follower in list(self.subscribers.get(channel, ())):
            follower.offer(event)

    async def _revoke(self, token_id: str) -> None:
        for connection in list(self.connections):
            if connection.token_id == token_id:
                await connection.revoke()
