"""Injectable time. Code that needs "now" takes a `Clock`; tests pass a `FrozenClock`."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Annotated, Protocol

from pydantic import AfterValidator, AwareDatetime


class Clock(Protocol):
    def now(self) -> datetime: ...

    def monotonic(self) -> float: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()


class FrozenClock:
    """A clock that moves only when told to."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)
        self._mono = 0.0

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)
        self._mono += seconds


EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2100, 1, 1, tzinfo=UTC)


def _utc_instant(value: datetime) -> datetime:
    try:
        instant = value.astimezone(UTC)
    except OverflowError:
        raise ValueError("must be between 1970 and 2100") from None
    if not EARLIEST <= instant < LATEST:
        raise ValueError("must be between 1970 and 2100")
    return instant


UtcInstant = Annotated[AwareDatetime, AfterValidator(_utc_instant)]
"""A client-sent time with a zone, normalised to UTC and within a sane range (so date
arithmetic on it cannot overflow)."""
