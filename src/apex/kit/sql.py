"""SQL functions that PostgreSQL and SQLite spell differently, as one expression each."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Integer, String
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from apex.kit.models import UtcDateTime


class utc_day(FunctionElement[str]):
    """The UTC calendar day of a timestamp column as 'YYYY-MM-DD', on either backend."""

    type = String()
    inherit_cache = True
    name = "utc_day"


@compiles(utc_day, "postgresql")
def _utc_day_postgresql(element: utc_day, compiler: Any, **kw: Any) -> str:
    return f"to_char({compiler.process(element.clauses, **kw)} AT TIME ZONE 'UTC', 'YYYY-MM-DD')"


@compiles(utc_day, "sqlite")
def _utc_day_sqlite(element: utc_day, compiler: Any, **kw: Any) -> str:
    # Stored as 'YYYY-MM-DD HH:MM:SS…' in UTC (ingestion converts every timestamp to UTC).
    return f"substr({compiler.process(element.clauses, **kw)}, 1, 10)"


class utc_hour(FunctionElement[int]):
    """The UTC hour of the day (0-23) of a timestamp column, on either backend."""

    type = Integer()
    inherit_cache = True
    name = "utc_hour"


@compiles(utc_hour, "postgresql")
def _utc_hour_postgresql(element: utc_hour, compiler: Any, **kw: Any) -> str:
    return f"extract(hour FROM {compiler.process(element.clauses, **kw)} AT TIME ZONE 'UTC')::int"


@compiles(utc_hour, "sqlite")
def _utc_hour_sqlite(element: utc_hour, compiler: Any, **kw: Any) -> str:
    return f"cast(substr({compiler.process(element.clauses, **kw)}, 12, 2) AS integer)"


class hour_start(FunctionElement[Any]):
    """A timestamp column truncated to its UTC hour, as a timestamp of the same type."""

    type = UtcDateTime()
    inherit_cache = True
    name = "hour_start"


@compiles(hour_start, "postgresql")
def _hour_start_postgresql(element: hour_start, compiler: Any, **kw: Any) -> str:
    column = compiler.process(element.clauses, **kw)
    return f"(date_trunc('hour', {column} AT TIME ZONE 'UTC') AT TIME ZONE 'UTC')"


@compiles(hour_start, "sqlite")
def _hour_start_sqlite(element: hour_start, compiler: Any, **kw: Any) -> str:
    # SQLAlchemy stores 'YYYY-MM-DD HH:MM:SS.ffffff'; the hour keeps that format.
    return f"(substr({compiler.process(element.clauses, **kw)}, 1, 13) || ':00:00.000000')"


class least_of(FunctionElement[Any]):
    """The smaller of two values (PostgreSQL `least`, SQLite's two-argument `min`)."""

    inherit_cache = True
    name = "least"


class greatest_of(FunctionElement[Any]):
    """The larger of two values (PostgreSQL `greatest`, SQLite's two-argument `max`)."""

    inherit_cache = True
    name = "greatest"


@compiles(least_of)
def _least(element: least_of, compiler: Any, **kw: Any) -> str:
    return f"least({compiler.process(element.clauses, **kw)})"


@compiles(greatest_of)
def _greatest(element: greatest_of, compiler: Any, **kw: Any) -> str:
    return f"greatest({compiler.process(element.clauses, **kw)})"


@compiles(least_of, "sqlite")
def _least_sqlite(element: least_of, compiler: Any, **kw: Any) -> str:
    return f"min({compiler.process(element.clauses, **kw)})"


@compiles(greatest_of, "sqlite")
def _greatest_sqlite(element: greatest_of, compiler: Any, **kw: Any) -> str:
    return f"max({compiler.process(element.clauses, **kw)})"
