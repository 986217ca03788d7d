"""Programmatic Alembic: the commands behind `apex migrate`, usable from tests and code."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

from apex.kit.db import ensure_sqlite_directory
from apex.settings import Settings

MIGRATIONS_DIR = Path(__file__).resolve().parent
# Revision ids are date-prefixed (`2026_11_25_0001`): `apex migrate revision` picks the next.
FILE_TEMPLATE = "%%(rev)s_%%(slug)s"


def alembic_config(
    database_url: str, *, stdout: TextIO | None = None, extra_locations: Sequence[str] = ()
) -> Config:
    ensure_sqlite_directory(database_url)
    config = Config(stdout=stdout) if stdout is not None else Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    locations = [
        str(MIGRATIONS_DIR / "versions"),
        *(str(Path(p).resolve()) for p in extra_locations),
    ]
    config.set_main_option("version_locations", os.pathsep.join(locations))
    config.set_main_option("file_template", FILE_TEMPLATE)
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def config_for(settings: Settings, *, stdout: TextIO | None = None) -> Config:
    return alembic_config(
        settings.effective_database_url,
        stdout=stdout,
        extra_locations=settings.migration_extra_locations,
    )


def upgrade(settings: Settings, revision: str = "heads") -> None:
    command.upgrade(config_for(settings), revision)


def downgrade(settings: Settings, revision: str) -> None:
    command.downgrade(config_for(settings), revision)


def current(settings: Settings) -> str:
    out = io.StringIO()
    command.current(config_for(settings, stdout=out))
    return out.getvalue().strip()


def history(settings: Settings) -> str:
    out = io.StringIO()
    command.history(config_for(settings, stdout=out), verbose=False)
    return out.getvalue().strip()


def head_revision() -> str | None:
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    return script.get_current_head()


class SchemaOutOfDate(RuntimeError):
    """The database is behind the revisions this Apex needs."""


def require_current(current: set[str]) -> None:
    """Refuse to run on a database that lacks this code's head revision.

    A database *ahead* of the code (revisions it does not know) is accepted: with
    expand/contract revisions, old instances keep working while a rollout migrates.
    """
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    head = script.get_current_head()
    if head is None or head in current:
        return
    known = {rev.revision for rev in script.walk_revisions()}
    if current and not current <= known:
        return  # ahead of this code
    have = ", ".join(sorted(current)) or "an empty database"
    raise SchemaOutOfDate(
        f"The database schema is at {have}; this Apex needs {head}. Run `apex migrate upgrade`."
    )
