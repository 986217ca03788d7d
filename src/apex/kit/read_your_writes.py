"""Read-your-writes across requests and instances: after a principal's transaction wrote
and committed, that principal's reads go to the primary for a while (`apex.kit.replicas`
keeps it within one session). The mark lives in Redis, so every instance sees it; kept apart
from the routing so that code without Redis (the CLI) does not import its client."""

from __future__ import annotations

import contextlib
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncSession

from apex.kit.replicas import PRINCIPAL, ROUTER, USE_PRIMARY, WROTE


class ReadYourWrites:
    """After a principal's transaction wrote and committed, send that principal's reads to
    the primary for `window` seconds, on every instance (the mark lives in Redis)."""

    def __init__(self, redis: Redis, window: float) -> None:
        self.redis = redis
        self.window = window

    @staticmethod
    def _key(principal: str) -> str:
        return f"apex:ryw:{principal}"

    async def apply(self, session: AsyncSession, principal: str) -> None:
        info = session.sync_session.info
        if info.get(ROUTER) is None or self.window <= 0:
            return
        info[PRINCIPAL] = principal
        try:
            if await self.redis.exists(self._key(principal)):
                info[USE_PRIMARY] = True
        except RedisError:
            info[USE_PRIMARY] = True  # cannot tell: be safe

    async def after_commit(self, info: dict[str, Any]) -> None:
        principal = info.get(PRINCIPAL)
        if principal and info.get(WROTE):
            with contextlib.suppress(RedisError):
                await self.redis.set(self._key(principal), "1", px=int(self.window * 1000))
