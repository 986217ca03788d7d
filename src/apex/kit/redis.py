"""One Redis client factory. Unset `APEX_REDIS_URL` → an in-process fakeredis server.

Both are `redis.asyncio.Redis` instances, so the rest of Apex never knows which it has.
The real client reconnects by itself after a server restart: broken connections are
dropped from its pool and commands are retried (twice, with backoff).
"""

from __future__ import annotations

from typing import Any

import fakeredis
from opentelemetry.trace import SpanKind
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from apex.observability import tracing
from apex.settings import Settings


class TracedRedis(Redis):
    """A client span per Redis command (its name, never its arguments)."""

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        name = str(args[0]) if args else "?"
        with tracing.span(f"redis {name}", kind=SpanKind.CLIENT, attributes={"db.system": "redis"}):
            return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]


def create_redis(settings: Settings) -> Redis:
    if settings.redis_url is None:
        return fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer(), decode_responses=True)
    # Blocking: a burst beyond the pool (hundreds of WebSocket clients connecting at once)
    # waits up to the socket timeout for a connection instead of failing at once.
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        decode_responses=True,
        socket_timeout=settings.redis_socket_timeout,
        socket_connect_timeout=settings.redis_socket_timeout,
        health_check_interval=30,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_socket_timeout,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )
    return TracedRedis.from_pool(pool)
