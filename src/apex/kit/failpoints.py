"""Named fault-injection points, so tests can make a real process fail between two steps.

Production code calls `failpoints.hit("signup.after_user")`; nothing happens unless that
name is listed in `APEX_FAILPOINTS` (refused when `APEX_ENVIRONMENT=production`).
"""

from __future__ import annotations

from collections.abc import Iterable


class FailpointTriggered(RuntimeError):
    """Raised at an enabled failpoint: to the caller it is an unexpected error."""


class Failpoints:
    def __init__(self, enabled: Iterable[str] = ()) -> None:
        self.enabled = frozenset(enabled)

    def hit(self, name: str) -> None:
        if name in self.enabled:
            raise FailpointTriggered(f"failpoint {name!r} triggered")


NO_FAILPOINTS = Failpoints()
