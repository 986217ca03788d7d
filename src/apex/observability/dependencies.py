"""The health checks of `apex serve`: one per dependency, critical or degraded.

| check            | critical | probed                                                     |
|------------------|----------|------------------------------------------------------------|
| database         | yes      | per request: SELECT 1 on the primary, and its pool         |
| redis            | yes      | per request: PING                                          |
| replica:<n>      | no       | per request: SELECT 1; reads fall back to the primary      |
| queue            | no       | per request: live `apex worker`s, backlog; jobs wait       |
| llm:<provider>   | no       | background: any HTTP answer below 500 from its base URL    |
| payments         | no       | background: any HTTP answer below 500 from the gateway     |
| mail             | no       | background: the SMTP server's greeting                     |

Remote probes never send credentials: reachability is what they measure.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import httpx
from redis.asyncio import Redis
from sqlalchemy import text

from apex.kit.clock import Clock
from apex.kit.db import Database
from apex.kit.mail import SmtpMailer
from apex.kit.queue import WorkerRegistry
from apex.kit.replicas import Replica
from apex.observability.health import HealthCheck
from apex.settings import Settings

PROVIDER_BASES = {"openai": "https://api.openai.com/v1", "anthropic": "https://api.anthropic.com"}
STRIPE_BASE = "https://api.stripe.com"


def database_check(database: Database) -> HealthCheck:
    async def probe() -> dict[str, Any]:
        await database.ping()
        pool = database.pool_status()
        return {
            "backend": database.backend,
            "in_use": pool.checked_out,
            "idle": pool.idle,
            "overflow": pool.overflow,
            "waiting": pool.waiting,
        }

    return HealthCheck("database", probe)


def replica_checks(database: Database) -> list[HealthCheck]:
    """One degraded-level check per replica: reads fall back to the primary without it."""
    if database.replicas is None:
        return []
    replicas = database.replicas

    def check(number: int, replica: Replica) -> HealthCheck:
        async def probe() -> dict[str, Any]:
            async with replica.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
            return {
                "url": replica.name,  # password hidden; operators only (see health.public_view)
                "lag_seconds": round(replica.lag_seconds, 3),
                "serving_reads": replicas.usable(replica),
            }

        # Numbered in APEX_DATABASE_REPLICA_URLS order: the name is public, the URL is not.
        return HealthCheck(f"replica:{number}", probe, critical=False)

    return [check(number, replica) for number, replica in enumerate(replicas.replicas, 1)]


def redis_check(redis: Redis) -> HealthCheck:
    async def probe() -> None:
        await redis.ping()

    return HealthCheck("redis", probe)


def queue_check(redis: Redis, settings: Settings, clock: Clock) -> HealthCheck:
    """Jobs are queued in Redis and run by `apex worker`s: with none alive, agent runs and
    invoice collections wait (degraded, not down: the API still answers)."""
    workers = WorkerRegistry(redis, settings, clock)

    async def probe() -> dict[str, Any]:
        alive = await workers.alive()
        backlog = int(await redis.xlen(settings.queue_name))
        if alive == 0:
            raise RuntimeError(f"no apex worker is alive; {backlog} queued jobs wait")
        return {"workers": alive, "stream_length": backlog}

    return HealthCheck("queue", probe, critical=False)


def http_check(name: str, url: str, timeout: float) -> HealthCheck:
    """Reachable when the server answers below 500 (an unauthenticated 401 or a 404 proves
    it is up; no credentials are sent)."""

    async def probe() -> dict[str, Any]:
        client = httpx.AsyncClient(timeout=timeout, follow_redirects=False)
        async with client, client.stream("GET", url) as response:  # the status, not the body
            status = response.status_code
        if status >= 500:
            raise RuntimeError(f"answered {status}")
        return {"host": urlsplit(url).netloc, "status_code": status}

    return HealthCheck(name, probe, critical=False, background=True)


def smtp_check(url: str, timeout: float) -> HealthCheck:
    mailer = SmtpMailer(url, sender="health@apex.invalid", timeout=timeout)

    async def probe() -> dict[str, Any]:
        await mailer.probe()
        return {"host": f"{mailer.hostname}:{mailer.port}"}

    return HealthCheck("mail", probe, critical=False, background=True)


def llm_checks(settings: Settings) -> list[HealthCheck]:
    configured = [
        ("llm", settings.llm_provider, settings.llm_base_url),
        ("llm-fallback", settings.llm_fallback_provider, settings.llm_fallback_base_url),
    ]
    return [
        http_check(f"{role}:{kind}", base or PROVIDER_BASES[kind], settings.health_check_timeout)
        for role, kind, base in configured
        if kind in PROVIDER_BASES
    ]


def remote_checks(settings: Settings) -> list[HealthCheck]:
    checks = llm_checks(settings)
    if settings.stripe_api_key is not None and not settings.payments_sandbox:
        base = settings.stripe_api_base or STRIPE_BASE
        checks.append(http_check("payments", base, settings.health_check_timeout))
    if settings.smtp_url is not None:
        checks.append(
            smtp_check(settings.smtp_url.get_secret_value(), settings.health_check_timeout)
        )
    return checks


def build_checks(
    settings: Settings, database: Database, redis: Redis, clock: Clock
) -> list[HealthCheck]:
    """Every dependency of `apex serve` under these settings."""
    local = [database_check(database), redis_check(redis), *replica_checks(database)]
    if settings.redis_url is not None:  # on the embedded default jobs run in-process
        local.append(queue_check(redis, settings, clock))
    return [*local, *remote_checks(settings)]
