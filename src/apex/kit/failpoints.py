"""Named fault-injection points, so tests can make a real process fail between two steps.

Production code calls `failpoints.hit("signup.after_user")` (raise), `failpoints.kill(...)`
(the process dies at once, as under `kill -9`) or checks
`failpoints.fires("analysis.runaway_cpu")` (misbehave); nothing happens unless that name is
listed in `APEX_FAILPOINTS` (refused when `APEX_ENVIRONMENT=production`). `name:N` fires
only the first N times in the process.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable


class FailpointTriggered(RuntimeError):
    """Raised at an enabled failpoint: to the caller it is an unexpected error."""


class Failpoints:
    def __init__(self, enabled: Iterable[str] = ()) -> None:
        self.remaining: dict[str, int | None] = {}
        for entry in enabled:
            name, _, count = entry.partition(":")
            self.remaining[name] = int(count) if count else None

    @property
    def enabled(self) -> frozenset[str]:
        return frozenset(self.remaining)

    def fires(self, name: str) -> bool:
        if name not in self.remaining:
            return False
        left = self.remaining[name]
        if left is None:
            return True
        if left <= 0:
            return False
        self.remaining[name] = left - 1
        return True

    def hit(self, name: str) -> None:
        if self.fires(name):
            raise FailpointTriggered(f"failpoint {name!r} triggered")

    def kill(self, name: str) -> None:
        if self.fires(name):
            os.kill(os.getpid(), signal.SIGKILL)


NO_FAILPOINTS = Failpoints()
