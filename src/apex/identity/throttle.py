"""Login throttling: guessing passwords gets slower, and never locks the owner out.

- per address: at most `per_address_per_minute` attempts a minute (a flood from one place);
- per account and address: from the `failures_before_delay`-th failure on, each failure
  doubles the wait before the next attempt, up to `delay_cap_seconds`;
- per account from anywhere: the same, from four times as many failures, capped at half the delay
  (many addresses guessing one account), so the owner waits seconds, never hours.

A success clears the account's delays. Answers are the same whether the account exists;
accounts appear in Redis keys only as a hash. With Redis unreachable, sign-in works
unthrottled (logged) rather than not at all.
"""

from __future__ import annotations

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from apex.kit.digest import sha256_hex
from apex.kit.errors import RateLimited
from apex.kit.limits import Backoff, FixedWindow

log = structlog.get_logger(__name__)


def account_key(email: str) -> str:
    """How an address appears in Redis keys: hashed, never in clear."""
    return sha256_hex(email.strip().lower())[:24]


class LoginThrottle:
    def __init__(
        self,
        redis: Redis,
        *,
        per_address_per_minute: int,
        failures_before_delay: int,
        delay_cap_seconds: float,
    ) -> None:
        self.window = FixedWindow(redis)
        self.per_address_per_minute = per_address_per_minute
        self.pair = Backoff(
            redis,
            threshold=failures_before_delay,
            base_seconds=1,
            cap_seconds=delay_cap_seconds,
            forget_seconds=900,
            prefix="apex:login:pair",
        )
        self.account = Backoff(
            redis,
            threshold=failures_before_delay * 4,
            base_seconds=1,
            cap_seconds=delay_cap_seconds / 2,
            forget_seconds=900,
            prefix="apex:login:account",
        )

    async def before_attempt(self, email: str, address: str, now: float) -> None:
        """Raise RateLimited (with Retry-After) if this attempt must wait."""
        try:
            await self._check(email, address, now)
        except RedisError as exc:
            log.warning("login_throttle_unavailable", error=type(exc).__name__)

    async def _check(self, email: str, address: str, now: float) -> None:
        per_address = await self.window.hit(
            "login", address, limit=self.per_address_per_minute, window_seconds=60, now=now
        )
        if not per_address.allowed:
            raise RateLimited(
                "Too many sign-in attempts from your address; try again later.",
                retry_after=per_address.reset_seconds,
            )
        account = account_key(email)
        wait = max(
            await self.pair.wait_seconds(f"{account}:{address}", now),
            await self.account.wait_seconds(account, now),
        )
        if wait > 0:
            raise RateLimited(
                "Too many failed sign-ins for this account; try again shortly.", retry_after=wait
            )

    async def failed(self, email: str, address: str, now: float) -> None:
        account = account_key(email)
        try:
            await self.pair.failed(f"{account}:{address}", now)
            await self.account.failed(account, now)
        except RedisError as exc:
            log.warning("login_throttle_unavailable", error=type(exc).__name__)

    async def cleared(self, email: str) -> None:
        """Forget the account's own delays (its owner proved the address by mail); delays
        of the addresses that guessed stay."""
        try:
            await self.account.succeeded(account_key(email))
        except RedisError as exc:
            log.warning("login_throttle_unavailable", error=type(exc).__name__)

    async def succeeded(self, email: str, address: str) -> None:
        account = account_key(email)
        try:
            await self.pair.succeeded(f"{account}:{address}")
            await self.account.succeeded(account)
        except RedisError as exc:
            log.warning("login_throttle_unavailable", error=type(exc).__name__)
