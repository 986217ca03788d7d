"""Fixtures that start real services. Session-scoped ones are shared by the tests of one
worker and must not be broken by a test; tests that kill or restart a service take the
function-scoped `fresh_*` fixtures."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
from fastapi import FastAPI
from sqlalchemy import text

from apex.app import create_app
from apex.kit.clock import Clock
from apex.kit.db import Database
from apex.settings import Settings
from tests.harness import ApexServer, ApexWorker, HarnessError, PostgresCluster, RedisServer
from tests.harness.payments import PaymentsServer
from tests.harness.smtp import SmtpServer

SECRET = "test-secret-key-0123456789-abcdefghijklmnop"


def migrate(
    database_url: str, *args: str, extra_locations: str = ""
) -> subprocess.CompletedProcess[str]:
    """Run `apex migrate ARGS` as a real subprocess against `database_url`."""
    return run_apex(database_url, "migrate", *args, extra_locations=extra_locations)


def run_apex(
    database_url: str, *args: str, extra_locations: str = "", **settings: str
) -> subprocess.CompletedProcess[str]:
    """Run `apex ARGS` as a real subprocess against `database_url` (`settings`: more APEX_*
    variables, named in lower case)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("APEX_")}
    env["APEX_DATABASE_URL"] = database_url
    env |= {f"APEX_{name.upper()}": value for name, value in settings.items()}
    if extra_locations:
        env["APEX_MIGRATION_EXTRA_LOCATIONS"] = extra_locations
    return subprocess.run(
        [sys.executable, "-m", "apex", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    cluster = PostgresCluster().init().start()
    yield cluster
    cluster.destroy()


@pytest.fixture(scope="session")
def template_database(postgres: PostgresCluster) -> str:
    """A database migrated to head once; each test clones it (CREATE DATABASE ... TEMPLATE)."""
    name = postgres.create_database("apex_template")
    result = migrate(postgres.url(name), "upgrade", "head")
    if result.returncode != 0:
        raise HarnessError(f"migrating the template failed:\n{result.stdout}{result.stderr}")
    return name


@pytest.fixture
def database_url(postgres: PostgresCluster, template_database: str) -> Iterator[str]:
    name = postgres.create_database(template=template_database)
    yield postgres.url(name)
    postgres.drop_database(name)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.destroy()


@pytest.fixture
def fresh_postgres() -> Iterator[PostgresCluster]:
    cluster = PostgresCluster(name="fresh").init().start()
    yield cluster
    cluster.destroy()


@pytest.fixture
def fresh_redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.destroy()


class SharedMail:
    """The SMTP server every Apex process of this test session mails to (one per worker):
    sign-up verification tokens are read from it (`critical.conftest.signup`)."""

    server: SmtpServer | None = None

    @classmethod
    def get(cls) -> SmtpServer:
        if cls.server is None:
            raise HarnessError("the session's SMTP server is not running (mail_server fixture)")
        return cls.server


@pytest.fixture(scope="session", autouse=True)
def mail_server() -> Iterator[SmtpServer]:
    if SharedMail.server is not None:  # the fixture is imported by several directories
        yield SharedMail.server
        return
    SharedMail.server = SmtpServer().start()
    yield SharedMail.server
    SharedMail.server.stop()
    SharedMail.server = None


# Tests sign in and call the API far more often than people do, all from 127.0.0.1, on Free
# organisations, and reuse addresses across tests: the per-address sign-in and mail limits
# are raised and the plans' hourly API limits are off for them; tests of the limits
# themselves (test_rate_limits.py) turn them on.
TEST_DEFAULTS = {
    "login_attempts_per_minute": "10000",
    "mails_per_address_per_hour": "100000",
    "enforce_api_limits": "false",
    # A stopped test server leaves at once; the drain on SIGTERM has its own test.
    "shutdown_grace_seconds": "0",
    "worker_metrics_port": "0",  # many workers on one machine: the telemetry test sets one
}


def apex_env(database_url: str, redis_url: str, **settings: str) -> dict[str, str]:
    defaults = dict(TEST_DEFAULTS)
    if SharedMail.server is not None:
        defaults["smtp_url"] = SharedMail.server.url
    return {
        "APEX_DATABASE_URL": database_url,
        "APEX_REDIS_URL": redis_url,
        "APEX_SECRET_KEY": SECRET,
        "APEX_ENVIRONMENT": "test",
        **{f"APEX_{key.upper()}": value for key, value in {**defaults, **settings}.items()},
    }


@asynccontextmanager
async def in_process_app(data_dir: Path, clock: Clock, **settings: Any) -> AsyncIterator[FastAPI]:
    """The app in this process (for tests that drive its clock), mailing the session's SMTP
    server, started and stopped through its lifespan."""
    mail = {"smtp_url": SharedMail.server.url} if SharedMail.server is not None else {}
    application = create_app(
        Settings(data_dir=data_dir, environment="test", **{**mail, **settings}), clock=clock
    )
    async with application.router.lifespan_context(application):
        yield application


T = TypeVar("T")


def with_database(config: Settings, scenario: Callable[[Database], Awaitable[T]]) -> T:
    """`scenario(db)` in one event loop (the pool's connections belong to it), then the
    pool is closed: for tests that call the services directly."""

    async def in_one_loop() -> T:
        db = Database(config)
        try:
            return await scenario(db)
        finally:
            await db.dispose()

    return asyncio.run(in_one_loop())


def row_id(db: Database, value: uuid.UUID) -> uuid.UUID | str:
    """A UUID as a raw SQL parameter of `db`'s backend (SQLite stores them as hex text)."""
    return value.hex if db.backend == "sqlite" else value


async def insert_organization(db: Database, name: str, tier: str, now: datetime) -> uuid.UUID:
    """A new organisation, inserted in SQL (for tests that call the services directly)."""
    organization_id = uuid.uuid4()
    async with db.unit_of_work() as session:
        await session.execute(
            text(
                "INSERT INTO organizations (id, name, slug, tier, created_at, updated_at) "
                "VALUES (:id, :name, :slug, :tier, :now, :now)"
            ),
            {"id": row_id(db, organization_id), "name": name, "slug": organization_id.hex,
             "tier": tier, "now": now},
        )  # fmt: skip
    return organization_id


@pytest.fixture(params=["postgresql", "sqlite"])
def empty_database(
    request: pytest.FixtureRequest, postgres: PostgresCluster, tmp_path: Path
) -> Iterator[str]:
    """An empty database on each backend: a fresh one on the session's PostgreSQL, and an
    SQLite file."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'apex.db'}"
        return
    name = postgres.create_database()
    yield postgres.url(name)
    postgres.drop_database(name)


@pytest.fixture
def start_apex() -> Iterator[Callable[..., ApexServer]]:
    """Start real `apex serve` processes; all are stopped when the test ends."""
    servers: list[ApexServer] = []

    def start(database_url: str, redis_url: str, **settings: str) -> ApexServer:
        server = ApexServer(apex_env(database_url, redis_url, **settings))
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def payments() -> Iterator[PaymentsServer]:
    """A local payment gateway speaking Stripe's API (`apex.billing.sandbox`, a process)."""
    server = PaymentsServer().start()
    yield server
    server.stop()


@pytest.fixture
def start_worker() -> Iterator[Callable[..., ApexWorker]]:
    """Start real `apex worker` processes; all are stopped when the test ends."""
    workers: list[ApexWorker] = []

    def start(database_url: str, redis_url: str, **settings: str) -> ApexWorker:
        worker = ApexWorker(apex_env(database_url, redis_url, **settings))
        workers.append(worker)
        return worker.start()

    yield start
    for worker in workers:
        worker.stop()
