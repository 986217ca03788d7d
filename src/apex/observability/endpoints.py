"""The operators' view of this instance's health (GET /api/v1/operator/health) and the
organisation's product telemetry (GET /api/v1/telemetry)."""

from __future__ import annotations

import hmac
from datetime import timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel
from sqlalchemy.exc import SQLAlchemyError

from apex.identity.deps import CurrentOperator, Principal, RequirePermission
from apex.kit.clock import UtcInstant
from apex.kit.deps import SessionDep
from apex.kit.errors import Forbidden, NotFound, ServiceUnavailable, ValidationFailed
from apex.kit.text import Text
from apex.observability.health import HealthMonitor, HealthReport
from apex.observability.logstore import as_line
from apex.observability.metrics import CONTENT_TYPE, Metrics
from apex.observability.repository import TelemetryRepository

router = APIRouter(prefix="/api/v1/operator", tags=["operator"])
telemetry_router = APIRouter(prefix="/api/v1/telemetry", tags=["telemetry"])


@router.get("/health", response_model=HealthReport)
async def instance_health(request: Request, _: CurrentOperator) -> HealthReport:
    """Readiness of the instance that answers, explained: every dependency with its status
    since when, the reasons it is degraded or failing, and the recent status changes
    (operators only). Answers 200 whatever the state: it describes, `/health/ready` decides."""
    monitor: HealthMonitor = request.app.state.health
    return await monitor.report()


class Bucket(BaseModel):
    day: str
    hour: int | None
    value: int


class TelemetryOut(BaseModel):
    organization_id: str
    metric: str
    bucket: Literal["hour", "day"]
    total: int
    buckets: list[Bucket]


@telemetry_router.get("", response_model=TelemetryOut)
async def product_telemetry(
    request: Request,
    principal: Annotated[Principal, RequirePermission("usage:read")],
    session: SessionDep,
    metric: Annotated[Literal["usage.records"], Query(description="What is counted.")] = (
        "usage.records"
    ),
    bucket: Annotated[Literal["hour", "day"], Query()] = "day",
    since: Annotated[UtcInstant | None, Query(description="Default: 30 days before until.")] = None,
    until: Annotated[UtcInstant | None, Query(description="Default: now.")] = None,
) -> TelemetryOut:
    """The organisation's product points summed per UTC hour or day (records ingested, as
    counted when each batch committed; points are stored within seconds)."""
    until = until or request.app.state.clock.now()
    since = since or until - timedelta(days=30)
    if since >= until:
        raise ValidationFailed(
            "The period is empty.", errors=[{"field": "since", "message": "must be before until"}]
        )
    rows = await TelemetryRepository(session).sums(
        principal.organization_id, metric, since, until, bucket
    )
    buckets = [Bucket(day=day, hour=None if hour < 0 else hour, value=value)
               for day, hour, value in rows]  # fmt: skip
    return TelemetryOut(
        organization_id=str(principal.organization_id), metric=metric, bucket=bucket,
        total=sum(b.value for b in buckets), buckets=buckets,
    )  # fmt: skip


metrics_router = APIRouter()
LOOPBACK = {"127.0.0.1", "::1"}


@metrics_router.get("/metrics", include_in_schema=False)
async def prometheus_metrics(request: Request) -> Response:
    """This process's metrics in Prometheus's text format, for a scraper with
    `APEX_METRICS_TOKEN` as its bearer token (without a token set: loopback only)."""
    token = request.app.state.settings.metrics_token
    if token is None:
        allowed = request.client is not None and request.client.host in LOOPBACK
    else:
        sent = request.headers.get("authorization", "").removeprefix("Bearer ").encode()
        allowed = hmac.compare_digest(sent, token.get_secret_value().encode())
    if not allowed:
        raise Forbidden("Metrics are for the installation's scraper.")
    metrics: Metrics = request.app.state.metrics
    return Response(metrics.exposition(), media_type=CONTENT_TYPE)


class LogLine(BaseModel):
    """One stored line: its fields as the process wrote them (JSON), plus its id."""

    model_config = {"extra": "allow"}
    id: str


@router.get("/logs", response_model=list[LogLine])
async def aggregated_logs(
    request: Request,
    _: CurrentOperator,
    level: Annotated[Text | None, Query(max_length=10)] = None,
    service: Annotated[Text | None, Query(max_length=50)] = None,
    process: Annotated[Text | None, Query(max_length=100)] = None,
    trace_id: Annotated[str | None, Query(pattern=r"^[0-9a-f]{32}$")] = None,
    request_id: Annotated[Text | None, Query(max_length=128)] = None,
    organization_id: Annotated[Text | None, Query(max_length=36)] = None,
    event: Annotated[Text | None, Query(max_length=200)] = None,
    since: Annotated[UtcInstant | None, Query(description="Default: until - 1 hour.")] = None,
    until: Annotated[UtcInstant | None, Query(description="Default: now.")] = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 1000,
) -> list[dict[str, Any]]:
    """Every process's log lines from the log store (`APEX_LOG_STORE_URL`), oldest first,
    filtered by any of the fields (operators only)."""
    shipper = request.app.state.log_shipper
    if shipper is None:
        raise NotFound("No log store is configured (APEX_LOG_STORE_URL).")
    until = until or request.app.state.clock.now()
    since = since or until - timedelta(hours=1)
    given = {
        "level": level, "service": service, "process": process, "trace_id": trace_id,
        "request_id": request_id, "organization_id": organization_id, "event": event,
    }  # fmt: skip
    filters = {name: value for name, value in given.items() if value is not None}
    try:
        rows = await shipper.store.query(filters, since, until, limit)
    except (OSError, SQLAlchemyError) as exc:
        raise ServiceUnavailable("The log store is unreachable; try again.", retry_after=2) from exc
    return [as_line(row) for row in rows]
