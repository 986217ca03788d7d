"""Liveness, readiness and the dependency cascade.

`/health/live` answers while the process runs. `/health/ready` answers from the
`HealthMonitor`, which knows every dependency of this process:

- **critical** ones (PostgreSQL primary, Redis): without them Apex cannot serve, so one that
  fails makes readiness 503 and a load balancer takes the instance out;
- **degraded** ones (replicas, the job queue's workers, LLM providers, the payment gateway,
  mail): Apex still serves without them, answering 200 with status `degraded` and the
  reasons, so an operator sees what is not working while traffic keeps flowing.

Local dependencies (`background=False`) are probed on every readiness request, so a dead
database is seen by the very next probe. Remote ones (`background=True`) are probed by a
background loop every `health_probe_interval_seconds` and readiness reports their latest
result: a load balancer probing every second never becomes traffic to a provider, and a
provider that recovers is seen within one interval. Every check carries `since`, when it
last changed status, and the monitor keeps the recent transitions for the operator view.

On SIGTERM the monitor starts draining (`begin_drain`): readiness answers 503 `draining` at
once while requests are still served for `shutdown_grace_seconds`, so a load balancer stops
sending traffic before the server stops listening.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from apex import __version__
from apex.kit.clock import Clock

CheckFn = Callable[[], Awaitable[dict[str, Any] | None]]
Overall = Literal["ok", "degraded", "fail", "draining"]
TRANSITIONS_KEPT = 100

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """A named probe. A failed `critical` check fails readiness; a failed other one only
    degrades it. `background` checks run on the monitor's interval, not per request."""

    name: str
    probe: CheckFn
    critical: bool = True
    background: bool = False


class CheckResult(BaseModel):
    name: str
    status: Literal["ok", "fail"]
    critical: bool
    latency_ms: float
    since: datetime | None = None
    checked_at: datetime | None = None
    error: str | None = None
    details: dict[str, Any] | None = None


class Readiness(BaseModel):
    status: Overall
    version: str
    since: datetime | None = None
    reasons: list[str]
    checks: list[CheckResult]


class Transition(BaseModel):
    check: str
    status: Literal["ok", "fail"]
    at: datetime
    error: str | None = None


class HealthReport(Readiness):
    """The operator view: readiness plus the recent status changes, newest first."""

    draining_since: datetime | None = None
    probe_interval_seconds: float
    transitions: list[Transition]


async def _run_check(check: HealthCheck, limit: float) -> CheckResult:
    started = time.perf_counter()
    error: str | None = None
    details: dict[str, Any] | None = None
    try:
        details = await asyncio.wait_for(check.probe(), limit)
    except TimeoutError:
        error = f"timed out after {limit:g}s"
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"[:300]
    return CheckResult(
        name=check.name,
        status="fail" if error else "ok",
        critical=check.critical,
        latency_ms=round((time.perf_counter() - started) * 1000, 2),
        error=error,
        details=details,
    )


def _overall(results: list[CheckResult]) -> tuple[Overall, list[str]]:
    failed = [r for r in results if r.status == "fail"]
    reasons = [f"{r.name} ({'critical' if r.critical else 'degraded'}): {r.error}" for r in failed]
    if any(r.critical for r in failed):
        return "fail", reasons
    return ("degraded" if failed else "ok"), reasons


# Details that name where a dependency lives: for operators, never for anyone who can reach
# `/health/ready` (a load balancer, or an outsider on a misconfigured network).
ADDRESS_DETAILS = frozenset({"host", "url"})


def _without_address(result: CheckResult) -> CheckResult:
    """The error's type (its message may hold a host or an address) and the details that
    name no place."""
    error = result.error.split(":", 1)[0] if result.error else None
    details = {k: v for k, v in (result.details or {}).items() if k not in ADDRESS_DETAILS}
    return result.model_copy(update={"error": error, "details": details or None})


def public_view(readiness: Readiness) -> Readiness:
    """Readiness as `/health/ready` answers it: the same statuses, no addresses."""
    checks = [_without_address(result) for result in readiness.checks]
    _, reasons = _overall(checks)
    if readiness.status == "draining":
        reasons = [readiness.reasons[0], *reasons]
    return readiness.model_copy(update={"checks": checks, "reasons": reasons})


class HealthMonitor:
    """The checks of one process, their latest results and when each last changed."""

    def __init__(
        self, checks: list[HealthCheck], clock: Clock, *, timeout: float, interval: float
    ) -> None:
        self.checks = checks
        self.clock = clock
        self.timeout = timeout
        self.interval = interval
        self.draining_since: datetime | None = None
        self.transitions: deque[Transition] = deque(maxlen=TRANSITIONS_KEPT)
        self._latest: dict[str, CheckResult] = {}
        self._since: dict[str, datetime] = {}
        self._overall: tuple[Overall, datetime] | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if any(check.background for check in self.checks):
            self._task = asyncio.create_task(self._probe_forever(), name="health-probes")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def begin_drain(self) -> None:
        """SIGTERM: readiness fails from now on, whatever the dependencies say."""
        if self.draining_since is None:
            self.draining_since = self.clock.now()
            log.info("health_draining")

    async def readiness(self) -> Readiness:
        inline = [check for check in self.checks if not check.background or not self._seen(check)]
        fresh = await asyncio.gather(*(_run_check(check, self.timeout) for check in inline))
        for result in fresh:
            self._record(result)
        results = [self._latest[check.name] for check in self.checks]
        status, reasons = _overall(results)
        if self.draining_since is not None:
            status, reasons = "draining", ["shutting down: SIGTERM received", *reasons]
        return Readiness(
            status=status,
            version=__version__,
            since=self._overall_since(status),
            reasons=reasons,
            checks=results,
        )

    async def report(self) -> HealthReport:
        readiness = await self.readiness()
        return HealthReport(
            **readiness.model_dump(),
            draining_since=self.draining_since,
            probe_interval_seconds=self.interval,
            transitions=list(reversed(self.transitions)),
        )

    def _seen(self, check: HealthCheck) -> bool:
        return check.name in self._latest

    async def _probe_forever(self) -> None:
        background = [check for check in self.checks if check.background]
        while True:
            results = await asyncio.gather(
                *(_run_check(check, self.timeout) for check in background)
            )
            for result in results:
                self._record(result)
            await asyncio.sleep(self.interval)

    def _record(self, result: CheckResult) -> None:
        now = self.clock.now()
        previous = self._latest.get(result.name)
        if previous is None or previous.status != result.status:
            self._since[result.name] = now
            self.transitions.append(
                Transition(check=result.name, status=result.status, at=now, error=result.error)
            )
            if previous is not None:
                changed = log.warning if result.status == "fail" else log.info
                changed("health_changed", check=result.name, status=result.status,
                        critical=result.critical, error=result.error)  # fmt: skip
        result.since = self._since[result.name]
        result.checked_at = now
        self._latest[result.name] = result

    def _overall_since(self, status: Overall) -> datetime:
        if self._overall is None or self._overall[0] != status:
            self._overall = (status, self.clock.now())
        return self._overall[1]


router = APIRouter(prefix="/health", tags=["health"])


@router.get("/live")
async def live() -> dict[str, str]:
    return {"status": "ok", "version": __version__}


@router.get("/ready", response_model=Readiness, responses={503: {"model": Readiness}})
async def ready(request: Request) -> JSONResponse:
    """200 while this instance should get traffic (status `ok` or `degraded`, with the
    reasons); 503 when a critical dependency failed or the instance is shutting down.
    Unauthenticated, so it names no host: operators read the whole report at
    `/api/v1/operator/health`."""
    monitor: HealthMonitor = request.app.state.health
    readiness = await monitor.readiness()
    code = 503 if readiness.status in ("fail", "draining") else 200
    return JSONResponse(public_view(readiness).model_dump(mode="json"), status_code=code)
