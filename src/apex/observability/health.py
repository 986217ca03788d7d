"""Liveness and readiness.

`/health/live` answers while the process runs. `/health/ready` runs every registered check
concurrently, each under its own timeout, and answers 503 when a critical one fails. The
body lists every check with its status and latency, so an operator sees which one failed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from apex import __version__

CheckFn = Callable[[], Awaitable[dict[str, Any] | None]]


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """A named probe. `critical` checks decide readiness; others only report."""

    name: str
    probe: CheckFn
    critical: bool = True


class CheckResult(BaseModel):
    name: str
    status: Literal["ok", "fail"]
    critical: bool
    latency_ms: float
    error: str | None = None
    details: dict[str, Any] | None = None


class Readiness(BaseModel):
    status: Literal["ok", "fail"]
    version: str
    checks: list[CheckResult]


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


async def evaluate(checks: list[HealthCheck], limit: float) -> Readiness:
    results = await asyncio.gather(*(_run_check(check, limit) for check in checks))
    healthy = all(r.status == "ok" for r in results if r.critical)
    return Readiness(status="ok" if healthy else "fail", version=__version__, checks=list(results))


router = APIRouter(prefix="/health", tags=["health"])


@router.get("/live")
async def live() -> dict[str, str]:
    return {"status": "ok", "version": __version__}


@router.get("/ready", response_model=Readiness, responses={503: {"model": Readiness}})
async def ready(request: Request) -> JSONResponse:
    state = request.app.state
    readiness = await evaluate(state.health_checks, state.settings.health_check_timeout)
    code = 200 if readiness.status == "ok" else 503
    return JSONResponse(readiness.model_dump(), status_code=code)
