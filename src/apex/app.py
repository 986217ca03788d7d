"""The FastAPI application: `create_app(settings)` wires lifespan, middleware and routers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import structlog
from alembic.migration import MigrationContext
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from starlette.types import ASGIApp

from apex import __version__
from apex.agents import endpoints as agent_endpoints
from apex.agents.runner import build_runtime
from apex.agents.tasks import register_agent_tasks
from apex.alerts import endpoints as alert_endpoints
from apex.alerts.tasks import keep_alerting
from apex.audit import endpoints as audit_endpoints
from apex.billing import endpoints as billing_endpoints
from apex.billing.collection import keep_billing
from apex.billing.feed import RevenueFeed
from apex.billing.gateway import build_gateway
from apex.billing.mails import MailedQuotaWarnings
from apex.billing.tasks import BillingRuntime, register_billing_tasks
from apex.chat import endpoints as chat_endpoints
from apex.findings import endpoints as findings_endpoints
from apex.identity import endpoints as identity_endpoints
from apex.identity.denylist import Denylist
from apex.identity.keys import KeyRing
from apex.identity.oidc import OidcLogin
from apex.identity.sessions import SessionStore
from apex.identity.throttle import LoginThrottle
from apex.identity.verification import MailLimit
from apex.kit import mail
from apex.kit.cache import TwoLevelCache
from apex.kit.channels import Channels
from apex.kit.clock import Clock, SystemClock
from apex.kit.db import Database
from apex.kit.error_handlers import install_error_handlers
from apex.kit.failpoints import Failpoints
from apex.kit.heap import freeze_startup_heap
from apex.kit.http import RequestLimits, document_limits
from apex.kit.limits import FixedWindow, Quota
from apex.kit.mail import Mailer, create_mailer
from apex.kit.outbox import OutboxRelay
from apex.kit.queue import JobQueue
from apex.kit.read_your_writes import ReadYourWrites
from apex.kit.redis import create_redis
from apex.migrations import runner
from apex.observability import endpoints as observability_endpoints
from apex.observability import health
from apex.observability.dependencies import build_checks
from apex.observability.logging import RequestContextMiddleware, configure_logging
from apex.observability.logstore import LogShipper
from apex.observability.metrics import Metrics, observe_cache, observe_pool, observe_replicas
from apex.observability.telemetry import PointBuffer
from apex.observability.tracing import configure_tracing, shutdown_tracing
from apex.realtime import gateway
from apex.realtime.hub import Hub
from apex.settings import Settings, load_settings
from apex.usage import endpoints as usage_endpoints
from apex.usage.files import IMPORT_PATH
from apex.usage.maintenance import keep_maintaining
from apex.web.app import mount_app
from apex.web.docs import mount_docs

log = structlog.get_logger("apex.app")


async def _require_current_schema(database: Database) -> None:
    async with database.engine.connect() as connection:
        current = await connection.run_sync(
            lambda sync: set(MigrationContext.configure(sync).get_current_heads())
        )
    runner.require_current(current)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    if settings.migrate_on_start:
        await asyncio.to_thread(runner.upgrade, settings)
    database = Database(settings)
    await _require_current_schema(database)
    redis = create_redis(settings)
    cache = TwoLevelCache(
        redis,
        l1_max_entries=settings.cache_l1_max_entries,
        l1_ttl=settings.cache_l1_ttl_seconds,
        l2_ttl=settings.cache_l2_ttl_seconds,
    )
    database.after_commit(cache.after_commit)
    read_your_writes = ReadYourWrites(redis, settings.read_your_writes_seconds)
    database.after_commit(read_your_writes.after_commit)
    relay = OutboxRelay(database, redis)
    # On the embedded default, jobs run in this process; otherwise `apex worker` runs them.
    runtime = (
        build_runtime(settings, database, redis, app.state.clock, app.state.failpoints)
        if settings.redis_url is None
        else None
    )
    queue = JobQueue(settings, app.state.metrics)
    if runtime is not None:  # the embedded default: the agents run here
        runtime.llm.metrics = app.state.metrics
    register_agent_tasks(queue, runtime)
    payments = build_gateway(settings)
    app.state.mailer = app.state.mailer or create_mailer(settings)
    billing = (
        BillingRuntime(database, payments, app.state.clock, app.state.failpoints, app.state.mailer)
        if runtime is not None
        else None
    )
    register_billing_tasks(queue, billing)
    database.after_commit(queue.after_commit)
    keyring = KeyRing(
        database,
        secret=settings.signing_secret,
        clock=app.state.clock,
        overlap_seconds=settings.signing_key_overlap_seconds,
    )
    await keyring.ensure_signer()
    app.state.keyring = keyring
    app.state.denylist = Denylist(redis, leeway=settings.token_leeway_seconds)
    app.state.channels = Channels(redis)
    database.after_commit(RevenueFeed(app.state.channels).after_commit)
    app.state.hub = Hub(redis)
    app.state.mail_limit = MailLimit(redis, settings.mails_per_address_per_hour)
    app.state.api_limiter = FixedWindow(redis)
    app.state.quota = Quota(redis)
    app.state.quota_warnings = MailedQuotaWarnings(redis, database, app.state.mailer)
    app.state.login_throttle = LoginThrottle(
        redis,
        per_address_per_minute=settings.login_attempts_per_minute,
        failures_before_delay=settings.login_failures_before_delay,
        delay_cap_seconds=settings.login_delay_cap_seconds,
    )
    app.state.oidc = OidcLogin(settings.oidc_providers, redis)
    app.state.sessions = SessionStore(
        redis,
        idle_seconds=settings.session_idle_seconds,
        absolute_seconds=settings.session_absolute_seconds,
        denylist=app.state.denylist,
        clock=app.state.clock,
    )
    app.state.database = database
    app.state.redis = redis
    app.state.cache = cache
    app.state.read_your_writes = read_your_writes
    app.state.outbox = relay
    app.state.queue = queue
    app.state.payments = payments
    app.state.health = health.HealthMonitor(
        build_checks(settings, database, redis, app.state.clock),
        app.state.clock,
        timeout=settings.health_check_timeout,
        interval=settings.health_probe_interval_seconds,
    )
    database.start()
    cache.start()
    relay.start()
    await queue.start()
    keyring.start(settings.signing_keys_refresh_seconds)
    await app.state.hub.start()
    app.state.health.start()
    app.state.log_shipper = LogShipper.from_settings(settings)
    app.state.telemetry = PointBuffer(
        database,
        app.state.metrics,
        capacity=settings.telemetry_buffer_points,
        interval=settings.telemetry_flush_seconds,
    )
    app.state.telemetry.start()
    observe_pool(app.state.metrics, database.pool_status)
    observe_cache(app.state.metrics, cache.stats)
    observe_replicas(app.state.metrics, database.replicas)
    restore_sigterm = gateway.install_drain(
        app.state.hub,
        settings.websocket_drain_seconds,
        announce=app.state.health.begin_drain,
        grace=settings.shutdown_grace_seconds,
    )
    maintenance_stop = asyncio.Event()
    app.state.usage_maintained = asyncio.Event()  # set after the first pass (embedded only)
    maintenance = (
        asyncio.create_task(
            keep_maintaining(
                database,
                app.state.clock,
                settings.usage_maintenance_seconds,
                maintenance_stop,
                app.state.usage_maintained,
            ),
            name="usage-maintenance",
        )
        if runtime is not None  # the embedded default: no worker to do it
        else None
    )
    billing_cycle = (
        asyncio.create_task(
            keep_billing(
                database,
                payments,
                app.state.clock,
                settings.billing_cycle_seconds,
                maintenance_stop,
                tax_rate=settings.billing_tax_rate,
                mailer=app.state.mailer,
            ),
            name="billing-cycle",
        )
        if runtime is not None
        else None
    )
    alerting = (
        asyncio.create_task(
            keep_alerting(database, app.state.clock, app.state.mailer, settings, maintenance_stop),
            name="alerting",
        )
        if runtime is not None
        else None
    )
    log.info(
        "apex_started",
        version=__version__,
        database=settings.safe_database_url(),
        redis="embedded" if settings.redis_url is None else "external",
    )
    if getattr(app.state, "owns_process", False):
        freeze_startup_heap()
    try:
        yield
    finally:
        await mail.drain()
        restore_sigterm()
        await app.state.health.stop()
        await app.state.hub.stop()
        maintenance_stop.set()
        if maintenance is not None:
            await maintenance
        if billing_cycle is not None:
            await billing_cycle
        if alerting is not None:
            await alerting
        await keyring.stop()
        await app.state.telemetry.stop()  # every point recorded, stored (uvicorn has drained)
        await queue.stop()
        await relay.stop()
        await cache.stop()
        await redis.aclose()
        await database.dispose()
        log.info("apex_stopped")
        shutdown_tracing()
        if app.state.log_shipper is not None:  # last: it ships the lines of the shutdown too
            await app.state.log_shipper.uninstall()


def _body_limits(settings: Settings) -> dict[str, int]:
    """Paths whose body limit is not the default one."""
    return {"/api/v1/usage/events": settings.max_ingest_body_bytes}


def _openapi_with_limits(app: FastAPI, settings: Settings) -> Callable[[], dict[str, Any]]:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, summary=app.summary, routes=app.routes
            )
            document_limits(schema, settings.max_body_bytes, _body_limits(settings))
            app.openapi_schema = schema
        return app.openapi_schema

    return openapi


def create_app(
    settings: Settings | None = None, *, clock: Clock | None = None, mailer: Mailer | None = None
) -> FastAPI:
    settings = settings or load_settings()
    configure_logging(settings.log_level, settings.log_format, service="apex-serve")
    configure_tracing("apex-serve")  # once per process; ids on every line even unexported
    app = FastAPI(
        title="Apex",
        version=__version__,
        summary="Find the waste in LLM spend and prove the savings.",
        lifespan=_lifespan,
        docs_url=None,  # served by apex.web.docs, without a CDN
        redoc_url=None,
        # Apex makes its own spans and metrics (apex.observability): FastAPI's built-in ones
        # would duplicate the HTTP span, trace a WebSocket as one endless span, and record
        # exception messages that may carry user data.
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    app.state.settings = settings
    app.state.clock = clock or SystemClock()
    app.state.mailer = mailer
    app.state.failpoints = Failpoints(settings.failpoints)
    install_error_handlers(app)
    if settings.cors_origins:
        # Browser front ends on other origins; credentials so the session cookie travels.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_credentials=True,
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "X-CSRF-Token", "X-Request-ID"],
        )
    app.add_middleware(
        RequestLimits,
        default_limit=settings.max_body_bytes,
        limits=_body_limits(settings),
        read_timeout=settings.body_read_timeout_seconds,
        streamed={IMPORT_PATH: settings.max_import_bytes},
    )
    app.state.metrics = Metrics("apex-serve")
    app.add_middleware(RequestContextMiddleware, on_response=app.state.metrics.record_request)
    app.openapi = _openapi_with_limits(app, settings)  # type: ignore[method-assign]
    mount_docs(app)
    mount_app(app)
    app.include_router(health.router)
    app.include_router(identity_endpoints.router)
    app.include_router(identity_endpoints.well_known)
    app.include_router(usage_endpoints.router)
    app.include_router(agent_endpoints.router)
    app.include_router(chat_endpoints.router)
    app.include_router(billing_endpoints.router)
    app.include_router(findings_endpoints.router)
    app.include_router(audit_endpoints.router)
    app.include_router(alert_endpoints.router)
    app.include_router(billing_endpoints.operator_router)
    app.include_router(observability_endpoints.router)
    app.include_router(observability_endpoints.telemetry_router)
    app.include_router(observability_endpoints.metrics_router)
    app.include_router(gateway.router)
    return app


def create_app_from_env() -> ASGIApp:
    """Factory for `uvicorn --factory` (each worker process reads the environment); with
    the demo checkout's gateway beside the app when the settings turn it on."""
    settings = load_settings()
    app = create_app(settings)
    app.state.owns_process = True  # a server process of its own: its heap may be frozen
    if not settings.payments_sandbox or settings.stripe_webhook_secret is None:
        return app
    from apex.billing.sandbox import with_sandbox

    secret = settings.stripe_webhook_secret.get_secret_value()
    return with_sandbox(
        app, public_url=settings.public_url, loopback_url=settings.loopback_url,
        webhook_secret=secret,
    )  # fmt: skip
