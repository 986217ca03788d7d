"""Database access: engines, the unit of work, and the request-scoped session dependency.

The request (or job) boundary owns the transaction: `Database.unit_of_work()` commits when
the block succeeds and rolls back on any error. Services receive the session and `flush()`;
they never commit. Driver failures are translated into Apex errors here, once:
an integrity violation becomes `Conflict`, an exhausted pool or an unreachable server
`ServiceUnavailable` (503 with Retry-After).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from greenlet import getcurrent, greenlet
from opentelemetry.trace import SpanKind, Status, StatusCode
from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import AsyncAdaptedQueuePool, ConnectionPoolEntry

from apex.kit.errors import Conflict, ServiceUnavailable
from apex.kit.replicas import (
    ROUTER,
    USE_PRIMARY,
    Replica,
    ReplicaSet,
    RoutingAsyncSession,
    RoutingSession,
)
from apex.observability import tracing
from apex.settings import Settings

log = structlog.get_logger(__name__)

AfterCommit = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class PoolStatus:
    """What the pool holds right now; read by health and metrics."""

    size: int
    checked_out: int
    overflow: int
    idle: int
    waiting: int


class InstrumentedPool(AsyncAdaptedQueuePool):
    """The async queue pool, counting the checkouts waiting for a free connection
    (those opening a new connection are not waiting for one)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._getting: set[greenlet] = set()  # one entry per checkout (_do_get recurses)
        self._opening = 0

    @property
    def waiting(self) -> int:
        return max(0, len(self._getting) - self._opening)

    def _do_get(self) -> ConnectionPoolEntry:
        checkout = getcurrent()
        outermost = checkout not in self._getting
        self._getting.add(checkout)
        try:
            return super()._do_get()
        finally:
            if outermost:
                self._getting.discard(checkout)

    def _create_connection(self) -> ConnectionPoolEntry:
        self._opening += 1
        try:
            return super()._create_connection()
        finally:
            self._opening -= 1


def _sqlite_pragmas(dbapi_connection: Any, _: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def ensure_sqlite_directory(url: str) -> None:
    """Create the folder of a SQLite file URL, so the embedded default starts from nothing."""
    if url.startswith("sqlite"):
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)


_USED_AT = "apex_used_at"  # when a pooled connection was opened or last checked in (monotonic)


def ping_when_idle(engine: AsyncEngine, idle_seconds: float) -> AsyncEngine:
    """Check a pooled connection before use only if it sat idle `idle_seconds` or more.

    One in use a moment ago is alive, or its server went down since, in which case the
    request that finds out fails and SQLAlchemy invalidates the whole pool, so the next ones
    reconnect. A connection that sat idle is where a restart goes unnoticed: it is pinged,
    and a dead one is replaced before the request sees it (`DisconnectionError`)."""
    dialect = engine.sync_engine.dialect

    def used_now(_: Any, record: ConnectionPoolEntry, *args: Any) -> None:
        record.info[_USED_AT] = time.monotonic()

    def checkout(dbapi_connection: Any, record: ConnectionPoolEntry, _: Any) -> None:
        used_at = record.info.get(_USED_AT)
        if used_at is not None and time.monotonic() - used_at < idle_seconds:
            return
        try:
            alive = dialect.do_ping(dbapi_connection)
        except dialect.loaded_dbapi.Error as error:
            if dialect.is_disconnect(error, dbapi_connection, None):
                raise DisconnectionError("pooled connection found dead") from error
            raise
        if not alive:
            raise DisconnectionError("pooled connection found dead")

    event.listen(engine.sync_engine, "connect", used_now)
    event.listen(engine.sync_engine, "checkin", used_now)
    event.listen(engine.sync_engine, "checkout", checkout)
    return engine


def create_engine(url: str, settings: Settings) -> AsyncEngine:
    """An async engine for `url` configured from `settings` (pool and timeouts)."""
    if url.startswith("sqlite"):
        ensure_sqlite_directory(url)
        engine = create_async_engine(url, echo=settings.db_echo)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return trace_statements(engine)
    if settings.db_pool_pre_ping and settings.db_pool_ping_idle_seconds > 0:
        return ping_when_idle(_postgresql_engine(url, settings), settings.db_pool_ping_idle_seconds)
    return _postgresql_engine(url, settings)


def _postgresql_engine(url: str, settings: Settings) -> AsyncEngine:
    return trace_statements(
        create_async_engine(
            url,
            echo=settings.db_echo,
            poolclass=InstrumentedPool,
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow,
            pool_timeout=settings.db_pool_timeout,
            pool_recycle=settings.db_pool_recycle,
            # Pinging every checkout costs a unit of work a third of its time (BEGIN, ";",
            # ROLLBACK); connections idle for less than `db_pool_ping_idle_seconds` skip it.
            pool_pre_ping=settings.db_pool_pre_ping and settings.db_pool_ping_idle_seconds == 0,
            connect_args={
                "timeout": settings.db_connect_timeout,
                "command_timeout": settings.db_command_timeout,
                "server_settings": {"application_name": "apex"},
            },
        )
    )


def dialect_insert(session: AsyncSession, model: Any) -> Any:
    """INSERT with the backend's ON CONFLICT clauses (PostgreSQL or SQLite)."""
    from sqlalchemy.dialects import postgresql, sqlite

    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(model)
    return sqlite.insert(model)


def trace_statements(engine: AsyncEngine) -> AsyncEngine:
    """A client span per SQL statement (its text, never its parameters), child of whatever
    span is current (the request, the job)."""
    system = engine.dialect.name

    def start(_: Any, __: Any, statement: str, ___: Any, context: Any, ____: bool) -> None:
        verb = statement.lstrip().split(None, 1)[0].upper() if statement.strip() else "SQL"
        context._apex_span = tracing.tracer.start_span(
            f"SQL {verb}", kind=SpanKind.CLIENT,
            attributes={"db.system": system, "db.statement": statement[:1000]},
        )  # fmt: skip

    def end(_: Any, __: Any, ___: str, ____: Any, context: Any, _____: bool) -> None:
        span = getattr(context, "_apex_span", None)
        if span is not None:
            span.end()

    def failed(error: Any) -> None:
        span = getattr(error.execution_context, "_apex_span", None)
        if span is not None:
            span.set_status(Status(StatusCode.ERROR, type(error.original_exception).__name__))
            span.end()

    event.listen(engine.sync_engine, "before_cursor_execute", start)
    event.listen(engine.sync_engine, "after_cursor_execute", end)
    event.listen(engine.sync_engine, "handle_error", failed)
    return engine


class Database:
    """The primary engine, the replicas, and the session factory, opened once per process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine = create_engine(settings.effective_database_url, settings)
        self.replicas: ReplicaSet | None = None
        info: dict[str, Any] = {}
        if settings.database_replica_urls and self.engine.dialect.name == "postgresql":
            self.replicas = ReplicaSet(
                primary=self.engine,
                replicas=[
                    Replica(url, create_engine(url, settings))
                    for url in settings.database_replica_urls
                ],
                max_lag=settings.replica_max_lag_seconds,
                retry_after=settings.replica_retry_seconds,
            )
            info[ROUTER] = self.replicas
        self.sessionmaker = async_sessionmaker(
            self.engine,
            class_=RoutingAsyncSession,
            sync_session_class=RoutingSession,
            expire_on_commit=False,
            autoflush=False,
            info=info,
        )
        self._after_commit: list[AfterCommit] = []
        self._monitor: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start background work (replica lag monitoring)."""
        if self.replicas is not None:
            self._monitor = asyncio.create_task(self.replicas.monitor(), name="replica-monitor")

    def after_commit(self, hook: AfterCommit) -> None:
        """Call `hook(session.info)` after every unit of work that commits (never on rollback).

        This is how side effects leave a transaction: a service records what to send in
        `session.info`; a hook sends it once the data it describes is durable.
        """
        self._after_commit.append(hook)

    @property
    def backend(self) -> str:
        return self.engine.dialect.name

    async def ping(self) -> None:
        """Round-trip `SELECT 1` on a pooled connection; raises if the server is unreachable."""
        async with self.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    def pool_status(self) -> PoolStatus:
        pool: Any = self.engine.pool
        if not isinstance(pool, InstrumentedPool):
            return PoolStatus(size=0, checked_out=0, overflow=0, idle=0, waiting=0)
        return PoolStatus(
            size=pool.size(),
            checked_out=pool.checkedout(),
            overflow=max(0, pool.overflow()),
            idle=pool.checkedin(),
            waiting=pool.waiting,
        )

    async def dispose(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
        if self.replicas is not None:
            await self.replicas.dispose()
        await self.engine.dispose()

    @asynccontextmanager
    async def unit_of_work(self, *, primary: bool = False) -> AsyncIterator[AsyncSession]:
        """A session whose transaction commits on success and rolls back on any error.
        `primary=True` keeps even its reads off the replicas (it must see the latest data)."""
        async with self.sessionmaker() as session:
            if primary:
                session.sync_session.info[USE_PRIMARY] = True
            try:
                yield session
                if session.in_transaction():  # nothing ran (all from cache): nothing to end
                    await session.commit()
            except BaseException as exc:
                await session.rollback()
                for undo in session.info.pop(_CALLS_AFTER_ROLLBACK, []):
                    try:
                        await undo()
                    except Exception:  # the original error is what the caller must see
                        log.exception("after_rollback_call_failed")
                raise translate_db_error(exc) from exc
            for hook in self._after_commit:
                await hook(session.info)
            for call in session.info.pop(_CALLS_AFTER_COMMIT, []):
                await call()


_CALLS_AFTER_COMMIT = "calls_after_commit"
_CALLS_AFTER_ROLLBACK = "calls_after_rollback"


def call_after_commit(session: AsyncSession, call: Callable[[], Awaitable[None]]) -> None:
    """Await `call()` once the session's transaction has committed, never on rollback: for a
    side effect outside the database (Redis) that must not be seen before the change it
    follows from is durable. Calls run in the order they were recorded."""
    session.info.setdefault(_CALLS_AFTER_COMMIT, []).append(call)


def call_after_rollback(session: AsyncSession, call: Callable[[], Awaitable[None]]) -> None:
    """Await `call()` if the session's transaction rolls back, or its commit fails: undo
    what was done outside the database (a Redis reservation) for data that will never
    exist. A failing call is logged; the caller sees the original error."""
    session.info.setdefault(_CALLS_AFTER_ROLLBACK, []).append(call)


def translate_db_error(exc: BaseException) -> BaseException:
    """Map driver errors a client can act on to Apex errors; leave everything else alone."""
    if isinstance(exc, IntegrityError):
        return Conflict("The change conflicts with existing data.", reason=_constraint_name(exc))
    if isinstance(exc, PoolTimeout):
        return ServiceUnavailable("The database is busy; try again shortly.", retry_after=1)
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return ServiceUnavailable("The database connection was lost; try again.", retry_after=1)
    if isinstance(exc, (ConnectionError, OSError)) and not isinstance(exc, FileNotFoundError):
        return ServiceUnavailable("The database is unreachable; try again shortly.", retry_after=2)
    return exc


def _constraint_name(exc: IntegrityError) -> str | None:
    diag = getattr(getattr(exc.orig, "__cause__", None), "constraint_name", None)
    return diag or getattr(exc.orig, "constraint_name", None)
