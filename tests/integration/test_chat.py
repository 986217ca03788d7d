"""A thread's messages take consecutive seqs, whoever writes them.

`chat.post_message` takes the next seq in the statement that locks the thread (raising
`threads.last_seq`). These tests hold it to that on PostgreSQL and SQLite: writers racing on
one thread, a message stored by a writer that does not keep `last_seq` (the version before
it, during a rolling deploy), and another organisation's thread.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from apex.chat import service as chat
from apex.chat.models import MessageRole
from apex.kit.db import Database
from apex.kit.errors import Conflict, NotFound
from apex.migrations import runner
from apex.settings import Settings
from tests.integration.conftest import insert_organization, row_id, with_database

NOW = datetime(2026, 11, 27, 12, tzinfo=UTC)
WRITERS = 40


async def _organization_with_thread(db: Database) -> tuple[uuid.UUID, uuid.UUID]:
    """A new organisation and a thread of it holding its first message (seq 1)."""
    organization_id = await insert_organization(db, "Chat", "mid", NOW)
    async with db.unit_of_work() as session:
        thread, _ = await chat.start_thread(
            session, organization_id=organization_id, created_by_id=None, title="t",
            first_message="welcome",
        )  # fmt: skip
    return organization_id, thread.id


async def _seqs(db: Database, thread_id: uuid.UUID) -> list[tuple[int, str]]:
    async with db.unit_of_work() as session:
        rows = await session.execute(
            text("SELECT seq, content FROM messages WHERE thread_id = :t ORDER BY seq"),
            {"t": row_id(db, thread_id)},
        )
        return [(int(seq), str(content)) for seq, content in rows]


async def _thread_row(db: Database, thread_id: uuid.UUID) -> tuple[int, datetime | str]:
    async with db.unit_of_work() as session:
        row = (
            await session.execute(
                text("SELECT last_seq, updated_at FROM threads WHERE id = :t"),
                {"t": row_id(db, thread_id)},
            )
        ).one()
    return int(row[0]), row[1]


async def _post(
    db: Database, organization_id: uuid.UUID, thread_id: uuid.UUID, content: str, now: datetime
) -> int:
    async with db.unit_of_work() as session:
        message = await chat.post_message(
            session, organization_id=organization_id, thread_id=thread_id, author_id=None,
            role=MessageRole.USER, content=content, now=now,
        )  # fmt: skip
        return message.seq


def _run(database_url: str, scenario: Callable[[Database], Awaitable[None]]) -> None:
    config = Settings(database_url=database_url, environment="test")
    runner.upgrade(config)
    with_database(config, scenario)


def test_writers_racing_on_one_thread_take_consecutive_seqs(empty_database: str) -> None:
    async def scenario(db: Database) -> None:
        organization_id, thread_id = await _organization_with_thread(db)
        other_org, other_thread = await _organization_with_thread(db)
        taken = await asyncio.gather(
            *(_post(db, organization_id, thread_id, f"m{n}", NOW) for n in range(WRITERS)),
            _post(db, other_org, other_thread, "elsewhere", NOW),
        )
        assert sorted(taken[:WRITERS]) == list(range(2, WRITERS + 2))
        assert taken[WRITERS] == 2  # the other thread counts on its own
        stored = await _seqs(db, thread_id)
        assert [seq for seq, _ in stored] == list(range(1, WRITERS + 2))
        assert sorted(content for _, content in stored[1:]) == sorted(
            f"m{n}" for n in range(WRITERS)
        )
        assert (await _thread_row(db, thread_id))[0] == WRITERS + 1

    _run(empty_database, scenario)


def test_a_message_stored_without_raising_last_seq_still_counts(empty_database: str) -> None:
    """An instance of the previous version stores seq = last stored + 1 and leaves
    `last_seq` as it was; the next message still follows it."""

    async def scenario(db: Database) -> None:
        organization_id, thread_id = await _organization_with_thread(db)
        async with db.unit_of_work() as session:
            await session.execute(
                text(
                    "INSERT INTO messages (id, thread_id, organization_id, seq, role, content, "
                    "created_at, updated_at) VALUES (:id, :t, :o, 2, 'user', 'old', :now, :now)"
                ),
                {"id": row_id(db, uuid.uuid4()), "t": row_id(db, thread_id),
                 "o": row_id(db, organization_id), "now": NOW},
            )  # fmt: skip
        later = NOW + timedelta(minutes=5)
        assert await _post(db, organization_id, thread_id, "new", later) == 3
        assert await _seqs(db, thread_id) == [(1, "welcome"), (2, "old"), (3, "new")]
        last_seq, updated_at = await _thread_row(db, thread_id)
        assert last_seq == 3
        assert str(updated_at).startswith(later.strftime("%Y-%m-%d %H:%M:%S"))

    _run(empty_database, scenario)


def test_another_organisations_thread_is_not_found_and_keeps_its_messages(
    empty_database: str,
) -> None:
    async def scenario(db: Database) -> None:
        _, thread_id = await _organization_with_thread(db)
        intruder, _ = await _organization_with_thread(db)
        with pytest.raises(NotFound):
            await _post(db, intruder, thread_id, "intrusion", NOW + timedelta(hours=1))
        assert await _seqs(db, thread_id) == [(1, "welcome")]
        assert (await _thread_row(db, thread_id))[0] == 1

    _run(empty_database, scenario)


async def _until_a_statement_waits_for_a_lock(db: Database) -> None:
    async with asyncio.timeout(20):
        while True:
            async with db.unit_of_work() as session:
                waiting = await session.scalar(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                        "AND datname = current_database()"
                    )
                )
            if waiting:
                return
            await asyncio.sleep(0.05)


def test_a_message_racing_the_previous_version_is_refused_whole_then_goes_through(
    database_url: str,
) -> None:
    """The case docs/migrations.md leaves open: the previous version locks the thread and
    stores seq 2 without raising `last_seq`; a message of this version waiting on that lock
    reads the messages as they were when it started, takes seq 2 too and is refused by the
    unique key, storing nothing; sent again, it is seq 3."""

    async def scenario(db: Database) -> None:
        organization_id, thread_id = await _organization_with_thread(db)
        async with db.unit_of_work() as previous_version:
            await previous_version.execute(
                text("SELECT id FROM threads WHERE id = :t FOR UPDATE"), {"t": thread_id}
            )
            waiting = asyncio.create_task(_post(db, organization_id, thread_id, "new", NOW))
            await _until_a_statement_waits_for_a_lock(db)
            await previous_version.execute(
                text(
                    "INSERT INTO messages (id, thread_id, organization_id, seq, role, content, "
                    "created_at, updated_at) VALUES (:id, :t, :o, 2, 'user', 'old', :now, :now)"
                ),
                {"id": uuid.uuid4(), "t": thread_id, "o": organization_id, "now": NOW},
            )
        with pytest.raises(Conflict):
            await waiting
        assert await _seqs(db, thread_id) == [(1, "welcome"), (2, "old")]
        assert await _post(db, organization_id, thread_id, "new", NOW) == 3
        assert await _seqs(db, thread_id) == [(1, "welcome"), (2, "old"), (3, "new")]

    _run(database_url, scenario)
