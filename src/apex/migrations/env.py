"""Alembic environment: runs revisions over Apex's async engine (PostgreSQL or SQLite)."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy import pool, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from apex.kit.models import UtcDateTime
from apex.models import metadata
from apex.settings import load_settings
from apex.usage.repository import is_partition

config = context.config


def _database_url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    return url if url else load_settings().effective_database_url


def _render_item(kind: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    """Revisions stay plain SQLAlchemy: Apex's UTC wrapper is rendered as its stored type."""
    if kind == "type" and isinstance(obj, UtcDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    return not (type_ == "table" and name is not None and is_partition(name))


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_item=_render_item,
        include_name=_include_name,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        transaction_per_migration=True,
    )


# Any constant works, as long as every Apex version uses the same one.
MIGRATION_LOCK_ID = 0x41504558  # "APEX"


def _acquire_migration_lock(connection: Connection) -> None:
    """Take the session-level advisory lock, polling in short transactions.

    Blocking in `pg_advisory_lock` would keep a snapshot open while waiting, and the holder's
    `CREATE INDEX CONCURRENTLY` waits for every older snapshot: a deadlock.
    """
    announced = False
    while True:
        got = connection.execute(
            text("SELECT pg_try_advisory_lock(:id)"), {"id": MIGRATION_LOCK_ID}
        )
        acquired = bool(got.scalar())
        connection.commit()  # the lock belongs to the session and outlives this transaction
        if acquired:
            return
        if not announced:
            print("Another apex migrate holds the migration lock; waiting for it…", file=sys.stderr)
            announced = True
        time.sleep(0.2)


def _run(connection: Connection) -> None:
    """Run the revisions, on PostgreSQL under an advisory lock: a second `apex migrate`
    started meanwhile waits, then finds nothing left to do."""
    locked = connection.dialect.name == "postgresql"
    if locked:
        _acquire_migration_lock(connection)
    try:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
    finally:
        if locked:
            connection.rollback()
            connection.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": MIGRATION_LOCK_ID})
            connection.commit()


async def _run_online() -> None:
    engine = create_async_engine(_database_url(), poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
    finally:
        await engine.dispose()


def run_migrations_offline() -> None:
    context.configure(
        url=_database_url(),
        target_metadata=metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    asyncio.run(_run_online())
