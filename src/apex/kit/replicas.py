"""Read/write splitting over PostgreSQL streaming replicas.

A `RoutingSession` sends plain SELECTs to a healthy replica and everything else — flushes,
INSERT/UPDATE/DELETE, `SELECT ... FOR UPDATE`, raw SQL — to the primary. Once a session has
written, all its later statements go to the primary (read-your-writes within a session);
`apex.kit.read_your_writes` extends that to a principal for `APEX_READ_YOUR_WRITES_SECONDS`
after a commit.

`ReplicaSet.monitor()` measures each replica's replay lag against the primary's WAL position
history (lag = how long ago the primary passed the position the replica has replayed) and
skips replicas behind `APEX_REPLICA_MAX_LAG_SECONDS`. A replica that fails a read is marked
down for `APEX_REPLICA_RETRY_SECONDS` and the read is retried on the primary, in the same
request.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog
from sqlalchemy import Select, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session

log = structlog.get_logger(__name__)
T = TypeVar("T")

ROUTER = "replica_router"
USE_PRIMARY = "use_primary"
WROTE = "wrote"
LAST_REPLICA = "last_replica"
PRINCIPAL = "principal"

_LSN_BYTES = "SELECT {fn}() - '0/0'::pg_lsn"


@dataclass(eq=False)
class Replica:
    url: str
    engine: AsyncEngine
    lag_seconds: float = 0.0
    down_until: float = 0.0
    last_error: str | None = None
    reads: int = 0

    @property
    def name(self) -> str:
        return make_url(self.url).render_as_string(hide_password=True)


@dataclass(eq=False)
class ReplicaSet:
    primary: AsyncEngine
    replicas: list[Replica]
    max_lag: float
    retry_after: float
    clock: Callable[[], float] = time.monotonic
    _history: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=600))
    _cycle: Any = None

    def __post_init__(self) -> None:
        self._cycle = itertools.cycle(self.replicas)

    def usable(self, replica: Replica) -> bool:
        return replica.down_until <= self.clock() and replica.lag_seconds <= self.max_lag

    def pick(self) -> Replica | None:
        """The next usable replica, round robin; None sends the read to the primary."""
        for _ in range(len(self.replicas)):
            replica: Replica = next(self._cycle)
            if self.usable(replica):
                return replica
        return None

    def mark_down(self, replica: Replica, error: BaseException) -> None:
        replica.down_until = self.clock() + self.retry_after
        replica.last_error = f"{type(error).__name__}: {error}"[:200]
        log.warning("replica_down", replica=replica.name, error=replica.last_error)

    async def _lsn(self, engine: AsyncEngine, fn: str) -> int:
        async with engine.connect() as connection:
            value = await connection.scalar(text(_LSN_BYTES.format(fn=fn)))
            return int(value or 0)

    async def measure(self) -> None:
        """One monitoring pass: record the primary's position, then each replica's lag."""
        now = self.clock()
        self._history.append((now, await self._lsn(self.primary, "pg_current_wal_lsn")))
        for replica in self.replicas:
            try:
                replayed = await asyncio.wait_for(
                    self._lsn(replica.engine, "pg_last_wal_replay_lsn"), self.retry_after
                )
            except Exception as exc:
                if replica.down_until <= now:
                    self.mark_down(replica, exc)
                continue
            behind_since = next((t for t, lsn in self._history if lsn > replayed), None)
            replica.lag_seconds = 0.0 if behind_since is None else now - behind_since
            replica.down_until = 0.0
            replica.last_error = None

    async def monitor(self, interval: float = 0.5) -> None:
        while True:
            with contextlib.suppress(Exception):
                await self.measure()
            await asyncio.sleep(interval)

    async def dispose(self) -> None:
        for replica in self.replicas:
            await replica.engine.dispose()


def _is_plain_read(clause: Any) -> bool:
    return isinstance(clause, Select) and clause._for_update_arg is None


class RoutingSession(Session):
    """Chooses the engine per statement; see the module docstring."""

    def get_bind(
        self, mapper: Any = None, clause: Any = None, **kwargs: Any
    ) -> Engine | Connection:
        router: ReplicaSet | None = self.info.get(ROUTER)
        primary = super().get_bind(mapper, clause=clause, **kwargs)
        if router is None:
            return primary
        if self._flushing or not _is_plain_read(clause):
            self.info[WROTE] = True
        if self.info.get(WROTE) or self.info.get(USE_PRIMARY):
            self.info[LAST_REPLICA] = None
            return primary
        replica = router.pick()
        self.info[LAST_REPLICA] = replica
        if replica is None:
            return primary
        replica.reads += 1
        return replica.engine.sync_engine


class RoutingAsyncSession(AsyncSession):
    """Retries a read on the primary when the replica it went to fails."""

    async def _fallback(self, call: Callable[[], Awaitable[T]]) -> T:
        try:
            return await call()
        except (DBAPIError, OSError) as exc:
            info = self.sync_session.info
            replica: Replica | None = info.get(LAST_REPLICA)
            router: ReplicaSet | None = info.get(ROUTER)
            if replica is None or router is None or info.get(WROTE):
                raise
            router.mark_down(replica, exc)
            await self.rollback()  # nothing but reads happened in this session
            info[USE_PRIMARY] = True
            return await call()

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        return await self._fallback(
            lambda: super(RoutingAsyncSession, self).execute(*args, **kwargs)
        )

    async def scalar(self, *args: Any, **kwargs: Any) -> Any:
        return await self._fallback(
            lambda: super(RoutingAsyncSession, self).scalar(*args, **kwargs)
        )

    async def get(self, *args: Any, **kwargs: Any) -> Any:
        return await self._fallback(lambda: super(RoutingAsyncSession, self).get(*args, **kwargs))
