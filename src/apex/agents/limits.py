"""Concurrent agent runs per organisation, enforced atomically in Redis for every process.

A sorted set per organisation holds its active run ids scored by when their slot lapses
(the run's deadline), so a slot left by a process that died frees itself.
"""

from __future__ import annotations

import uuid

from redis.asyncio import Redis

_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZSCORE', KEYS[1], ARGV[3]) then return 1 end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[3])
redis.call('PEXPIREAT', KEYS[1], math.floor(tonumber(ARGV[4]) * 1000))
return 1
"""


def slots_key(organization_id: uuid.UUID) -> str:
    return f"apex:org:{organization_id}:active_runs"


class RunSlots:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._acquire = redis.register_script(_ACQUIRE)

    async def acquire(
        self, organization_id: uuid.UUID, run_id: uuid.UUID, *, limit: int, now: float, until: float
    ) -> bool:
        """Take a slot for `run_id` if fewer than `limit` are held; True if it holds one."""
        taken = await self._acquire(
            keys=[slots_key(organization_id)], args=[now, limit, str(run_id), until]
        )
        return bool(taken)

    async def release(self, organization_id: uuid.UUID, run_id: uuid.UUID) -> None:
        await self.redis.zrem(slots_key(organization_id), str(run_id))
