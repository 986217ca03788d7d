"""Channels on a real redis-server: what `after` can and cannot replay. The gateway answers
`resumed {recovered: false}` exactly when it returns None, so each way history can fail a
client is checked here: trimmed, lost (flushed), or a position the channel never had."""

from __future__ import annotations

import asyncio
import uuid

import redis.asyncio as aioredis

from apex.kit.channels import Channels, parse_live, subject
from tests.harness import RedisServer


def test_after_replays_in_order_or_says_it_cannot(fresh_redis: RedisServer) -> None:
    async def scenario() -> None:
        client = aioredis.Redis.from_url(fresh_redis.url, decode_responses=True)
        try:
            channels = Channels(client, history=10)
            channel = f"thread:{uuid.uuid4()}"
            assert await channels.after(channel, 0) == []  # nothing yet, nothing missed
            assert await channels.after(channel, 3) is None  # a position it never had

            pubsub = client.pubsub()
            await pubsub.subscribe(subject(channel))
            await pubsub.get_message(timeout=1)  # the subscription's confirmation
            published = [await channels.publish(channel, {"n": n}) for n in range(1, 501)]
            assert [e.seq for e in published] == list(range(1, 501))
            assert len({e.epoch for e in published}) == 1
            live = await pubsub.get_message(timeout=1)
            assert live is not None
            first = parse_live(channel, live["data"])
            assert (first.seq, first.data, first.epoch) == (1, {"n": 1}, published[0].epoch)
            await pubsub.aclose()  # type: ignore[no-untyped-call]

            recent = await channels.after(channel, 495)
            assert recent is not None
            assert [(e.seq, e.data["n"]) for e in recent] == [(n, n) for n in range(496, 501)]
            assert await channels.after(channel, 500) == []
            assert await channels.after(channel, 501) is None  # beyond the channel
            assert await channels.after(channel, 5) is None  # trimmed away (history 10)

            await client.flushall()  # Redis lost its data: a new epoch starts
            assert await channels.after(channel, 500) is None
            again = await channels.publish(channel, {"n": "new"})
            assert again.seq == 1
            assert again.epoch != published[0].epoch
        finally:
            await client.aclose()

    asyncio.run(scenario())
