"""The operators' view of this instance's health: GET /api/v1/operator/health."""

from __future__ import annotations

from fastapi import APIRouter, Request

from apex.identity.deps import CurrentOperator
from apex.observability.health import HealthMonitor, HealthReport

router = APIRouter(prefix="/api/v1/operator", tags=["operator"])


@router.get("/health", response_model=HealthReport)
async def instance_health(request: Request, _: CurrentOperator) -> HealthReport:
    """Readiness of the instance that answers, explained: every dependency with its status
    since when, the reasons it is degraded or failing, and the recent status changes
    (operators only). Answers 200 whatever the state: it describes, `/health/ready` decides."""
    monitor: HealthMonitor = request.app.state.health
    return await monitor.report()
