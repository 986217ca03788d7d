"""Two-level cache: a bounded per-process L1 (TTL) over Redis (L2), with versioned entries.

Every key has a version in Redis: a random token, replaced by `invalidate(key)` after the
write's transaction commits (tokens never repeat, so a Redis restart that forgets them
cannot make an old L1 copy look current). `invalidate` also deletes the L2 entry and
publishes the key on `apex:cache:invalidate` so every instance drops its L1 copy.

Why reads cannot be stale after a write's response:
- an L1 hit is served only if its version still equals the Redis version (one small GET),
  so an instance that has not yet processed the pub/sub message still refuses its old copy;
- a reader stores what it loaded only if the version it saw before loading is still
  current (a compare-and-set script), so a slow reader cannot put an old value back.
A request that knows which keys it will read fetches their versions in one MGET at its
start (`read_versions`); each remembered version serves one L1 check of that unit of work,
so the check costs no round trip of its own and is never older than the request.
When Redis is unreachable, reads bypass both levels and go to the database (no errors);
invalidations that could not be sent are retried, and L1 is flushed, once Redis is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncSession

T = TypeVar("T")
INVALIDATION_CHANNEL = "apex:cache:invalidate"
_AFTER_COMMIT_KEYS = "cache_invalidations"
_READ_VERSIONS = "cache_versions"
# KEYS: version, data. ARGV: a fresh token, used only if the key has no version yet.
_READ = """
local version = redis.call('GET', KEYS[1])
if not version then
  redis.call('SET', KEYS[1], ARGV[1])
  return {ARGV[1], false}
end
return {version, redis.call('GET', KEYS[2])}
"""
# KEYS: version, data. ARGV: the version the value was loaded under, payload, ttl.
_SET_IF_VERSION = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
  return 1
end
return 0
"""
log = structlog.get_logger(__name__)


def _token() -> str:
    return secrets.token_hex(8)


def invalidate_after_commit(session: AsyncSession, key: str) -> None:
    """Invalidate `key` everywhere once the session's transaction commits (never on rollback)."""
    session.info.setdefault(_AFTER_COMMIT_KEYS, set()).add(key)


class LocalCache(Generic[T]):
    """Bounded LRU with a TTL per entry; values are kept with the version they were read at."""

    def __init__(
        self, max_entries: int, ttl: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_entries = max_entries
        self.ttl = ttl
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, str, T]] = OrderedDict()

    def get(self, key: str) -> tuple[str, T] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, version, value = entry
        if expires <= self._clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return version, value

    def put(self, key: str, version: str, value: T) -> None:
        self._entries[key] = (self._clock() + self.ttl, version, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def drop(self, key: str) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


class TwoLevelCache:
    """JSON-serialisable values by string key. `start()` listens for invalidations."""

    def __init__(
        self,
        redis: Redis,
        *,
        l1_max_entries: int = 10_000,
        l1_ttl: float = 30.0,
        l2_ttl: int = 300,
        prefix: str = "apex:cache",
    ) -> None:
        self.redis = redis
        self.l1: LocalCache[Any] = LocalCache(l1_max_entries, l1_ttl)
        self.l2_ttl = l2_ttl
        self.prefix = prefix
        self._pending: set[str] = set()
        self._listener: asyncio.Task[None] | None = None
        self._stopping = False
        self._read = redis.register_script(_READ)
        self._set_if_version = redis.register_script(_SET_IF_VERSION)
        self.stats = {"l1_hits": 0, "l2_hits": 0, "misses": 0, "bypassed": 0}

    def _version_key(self, key: str) -> str:
        return f"{self.prefix}:v:{key}"

    def _data_key(self, key: str) -> str:
        return f"{self.prefix}:d:{key}"

    async def read_versions(
        self, session: AsyncSession, keys: Sequence[str], *, also: Sequence[str] = ()
    ) -> list[Any]:
        """One MGET: the current versions of `keys`, remembered in `session`'s unit of work
        for its next `get` of each, and the values of the other Redis keys `also` (read in
        the same round trip); returns the latter. Raises RedisError like any Redis call."""
        values = await self.redis.mget([*map(self._version_key, keys), *also])
        remembered: dict[str, Any] = session.info.setdefault(_READ_VERSIONS, {})
        remembered.update(zip(keys, values[: len(keys)], strict=True))
        return list(values[len(keys) :])

    async def get(
        self,
        key: str,
        load: Callable[[], Awaitable[Any]],
        *,
        session: AsyncSession | None = None,
    ) -> Any:
        """The cached value of `key`, or `await load()` (which may return None: not cached).
        With `session`, a version `read_versions` remembered for it saves the L1 check's GET."""
        try:
            return await self._get(key, load, session)
        except RedisError as exc:
            self.stats["bypassed"] += 1
            log.warning("cache_bypassed", key=key, error=type(exc).__name__)
            self.l1.clear()  # we cannot tell what changed while Redis was unreachable
            return await load()

    async def _current_version(self, key: str, session: AsyncSession | None) -> Any:
        remembered = session.info.get(_READ_VERSIONS) if session is not None else None
        if remembered and key in remembered:
            return remembered.pop(key)  # once: a second read in the request asks Redis again
        return await self.redis.get(self._version_key(key))

    async def _get(
        self, key: str, load: Callable[[], Awaitable[Any]], session: AsyncSession | None
    ) -> Any:
        local = self.l1.get(key)
        if local is not None:
            if await self._current_version(key, session) == local[0]:
                self.stats["l1_hits"] += 1
                return local[1]
            self.l1.drop(key)
        keys = [self._version_key(key), self._data_key(key)]
        version, raw = await self._read(keys=keys, args=[_token()])
        if raw:
            stored = json.loads(raw)
            if stored["v"] == version:
                self.stats["l2_hits"] += 1
                self.l1.put(key, version, stored["data"])
                return stored["data"]
        self.stats["misses"] += 1
        value = await load()
        if value is not None:
            payload = json.dumps({"v": version, "data": value}, default=str)
            stored_ok = await self._set_if_version(
                keys=[self._version_key(key), self._data_key(key)],
                args=[version, payload, self.l2_ttl],
            )
            if stored_ok:
                self.l1.put(key, version, json.loads(payload)["data"])
        return value

    async def after_commit(self, info: dict[str, Any]) -> None:
        """The database's after-commit hook: send the invalidations the session recorded."""
        for key in sorted(info.get(_AFTER_COMMIT_KEYS, ())):
            await self.invalidate(key)

    async def invalidate(self, key: str) -> None:
        """Call after the write that changed `key` has committed."""
        self.l1.drop(key)  # (a version remembered before the write then never matches L1)
        try:
            await self._invalidate_remote(key)
        except RedisError as exc:
            self._pending.add(key)
            log.warning("cache_invalidation_deferred", key=key, error=type(exc).__name__)

    async def _invalidate_remote(self, key: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self._version_key(key), _token())
            pipe.delete(self._data_key(key))
            pipe.publish(INVALIDATION_CHANNEL, key)
            await pipe.execute()

    async def _flush_pending(self) -> None:
        for key in list(self._pending):
            await self._invalidate_remote(key)
            self._pending.discard(key)

    async def _listen_once(self) -> None:
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(INVALIDATION_CHANNEL)
            # (Re)connected: anything may have changed while we could not hear about it.
            self.l1.clear()
            await self._flush_pending()
            while not self._stopping:
                message = await pubsub.get_message(timeout=0.5)
                if message is not None and message["type"] == "message":
                    self.l1.drop(str(message["data"]))
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pubsub.aclose(), 1)  # type: ignore[no-untyped-call]

    async def _listen(self) -> None:
        while not self._stopping:
            try:
                await self._listen_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.l1.clear()
                log.warning("cache_listener_reconnecting", error=type(exc).__name__)
                await asyncio.sleep(0.2)

    def start(self) -> None:
        self._stopping = False
        self._listener = asyncio.create_task(self._listen(), name="cache-invalidation-listener")

    async def stop(self) -> None:
        """Let the listener leave its loop (cancelling a pub/sub read can wedge the client)."""
        self._stopping = True
        if self._listener is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._listener, 3)
