"""Logged-out access tokens: their `jti` stays on a Redis denylist until the token expires,
so every instance refuses them on the next request, and is broadcast so that WebSocket
connections authenticated with it close at once."""

from __future__ import annotations

from datetime import datetime

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

log = structlog.get_logger(__name__)
REVOKED_SUBJECT = "apex:identity:revoked"  # Pub/Sub: the jti of each token logged out


class Denylist:
    def __init__(self, redis: Redis, *, leeway: int) -> None:
        self.redis = redis
        self.leeway = leeway
        self._local: set[str] = set()  # what this instance denied, for when Redis is down

    @staticmethod
    def key(jti: str) -> str:
        """The Redis key that exists while `jti` is revoked (readable in a caller's MGET)."""
        return f"apex:denylist:{jti}"

    async def add(self, jti: str, expires_at: datetime, now: datetime) -> None:
        self._local.add(jti)
        ttl = max(1, int((expires_at - now).total_seconds()) + self.leeway + 1)
        await self.redis.set(self.key(jti), "1", ex=ttl)
        # Open WebSocket connections on every instance close at once (the gateway listens).
        await self.redis.publish(REVOKED_SUBJECT, jti)

    def denied_here(self, jti: str, unreachable: RedisError) -> bool:
        """The answer when Redis is unreachable: what this instance denied itself."""
        log.warning("denylist_unavailable", error=type(unreachable).__name__)
        return jti in self._local

    async def contains(self, jti: str) -> bool:
        try:
            return bool(await self.redis.exists(self.key(jti)))
        except RedisError as exc:
            return self.denied_here(jti, exc)
