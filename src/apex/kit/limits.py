"""The one rate limiter: fixed windows counted atomically in Redis, so a limit is exact
across every instance (and on the embedded default, on fakeredis with the same script).

`FixedWindow.hit(name, subject, limit, window_seconds, now)` consumes `cost` units of the
window that contains `now` if they fit, and says how many remain and when the window
resets — what the `RateLimit-Policy` / `RateLimit` headers and a 429's `Retry-After` need.
A refused hit consumes nothing. Windows are aligned to the epoch (an hourly limit resets on
the hour), which is what people expect to read in a plan.

`Backoff` is the login throttle's other half: growing delays after repeated failures,
never a lockout (a delay is capped, and a success clears it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from redis.asyncio import Redis


# KEYS[1] window counter; ARGV: limit, cost, ttl ms. Returns {allowed, used}.
_HIT = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local cost = tonumber(ARGV[2])
if used + cost > tonumber(ARGV[1]) then
  return {0, used}
end
used = redis.call('INCRBY', KEYS[1], cost)
if used == cost then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
return {1, used}
"""

# KEYS[1] counter; ARGV: limit, wanted, ttl ms. Grants as many of `wanted` as still fit.
# Returns {granted, used after}.
_TAKE = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local grant = math.min(tonumber(ARGV[2]), math.max(0, tonumber(ARGV[1]) - used))
if grant > 0 then
  used = redis.call('INCRBY', KEYS[1], grant)
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return {grant, used}
"""

# KEYS[1] hash {failures, next_at}; ARGV: now ms, threshold, base ms, cap ms, forget ms.
# Records one failure; from the threshold on, each failure doubles the wait before the
# next attempt (base, 2 x base, ... up to cap). Returns the ms until the next attempt.
_FAIL = """
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
local over = failures - tonumber(ARGV[2])
local wait = 0
if over >= 0 then
  wait = math.min(tonumber(ARGV[3]) * (2 ^ over), tonumber(ARGV[4]))
end
redis.call('HSET', KEYS[1], 'next_at', tonumber(ARGV[1]) + wait)
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return wait
"""


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_seconds: int  # until the window ends

    def headers(self, window_seconds: int) -> dict[str, str]:
        """The IETF RateLimit headers (draft-ietf-httpapi-ratelimit-headers)."""
        return {
            "RateLimit-Policy": f"{self.limit};w={window_seconds}",
            "RateLimit": f"limit={self.limit}, remaining={self.remaining}, "
            f"reset={self.reset_seconds}",
        }


class FixedWindow:
    def __init__(self, redis: Redis, prefix: str = "apex:limit") -> None:
        self.redis = redis
        self.prefix = prefix
        self._hit = redis.register_script(_HIT)

    def key(self, name: str, subject: str, window_seconds: int, now: float) -> str:
        window = int(now // window_seconds)
        return f"{self.prefix}:{name}:{subject}:{window_seconds}:{window}"

    async def hit(
        self,
        name: str,
        subject: str,
        *,
        limit: int,
        window_seconds: int,
        now: float,
        cost: int = 1,
    ) -> Decision:
        ends = (int(now // window_seconds) + 1) * window_seconds
        allowed, used = await self._hit(
            keys=[self.key(name, subject, window_seconds, now)],
            args=[limit, cost, window_seconds * 1000 + 1000],
        )
        return Decision(
            allowed=bool(allowed),
            limit=limit,
            remaining=max(0, limit - int(used)),
            reset_seconds=max(1, int(ends - now + 0.999)),
        )

    async def refund(
        self, name: str, subject: str, *, window_seconds: int, now: float, cost: int
    ) -> None:
        """Give back units consumed by work that did not happen (e.g. a rolled-back batch)."""
        if cost > 0:
            await self.redis.decrby(self.key(name, subject, window_seconds, now), cost)


class Quota:
    """A budget of units per named period (a calendar month of records): `take` grants as
    many as still fit, atomically; `give_back` returns units whose work did not happen."""

    def __init__(self, redis: Redis, prefix: str = "apex:quota") -> None:
        self.redis = redis
        self.prefix = prefix
        self._take = redis.register_script(_TAKE)

    def key(self, name: str, subject: str, period: str) -> str:
        return f"{self.prefix}:{name}:{subject}:{period}"

    async def take(
        self, name: str, subject: str, period: str, *, limit: int, wanted: int, ttl_seconds: int
    ) -> tuple[int, int]:
        """(granted, used now)."""
        granted, used = await self._take(
            keys=[self.key(name, subject, period)], args=[limit, wanted, ttl_seconds * 1000]
        )
        return int(granted), int(used)

    async def give_back(self, name: str, subject: str, period: str, units: int) -> None:
        if units > 0:
            await self.redis.decrby(self.key(name, subject, period), units)


class Backoff:
    """Growing delays after repeated failures of one subject (a login: account and address)."""

    def __init__(
        self,
        redis: Redis,
        *,
        threshold: int,
        base_seconds: float,
        cap_seconds: float,
        forget_seconds: float,
        prefix: str = "apex:backoff",
    ) -> None:
        self.redis = redis
        self.threshold = threshold
        self.base_ms = int(base_seconds * 1000)
        self.cap_ms = int(cap_seconds * 1000)
        self.forget_ms = int(forget_seconds * 1000)
        self.prefix = prefix
        self._fail = redis.register_script(_FAIL)

    def _key(self, subject: str) -> str:
        return f"{self.prefix}:{subject}"

    async def wait_seconds(self, subject: str, now: float) -> float:
        """How long this subject must still wait before its next attempt (0: go ahead)."""
        next_at = await self.redis.hget(self._key(subject), "next_at")
        if next_at is None:
            return 0.0
        return max(0.0, (float(next_at) - now * 1000) / 1000)

    async def failed(self, subject: str, now: float) -> float:
        """Record a failure; the seconds until the next attempt is allowed."""
        wait = await self._fail(
            keys=[self._key(subject)],
            args=[int(now * 1000), self.threshold, self.base_ms, self.cap_ms, self.forget_ms],
        )
        return float(wait) / 1000

    async def succeeded(self, subject: str) -> None:
        await self.redis.delete(self._key(subject))
