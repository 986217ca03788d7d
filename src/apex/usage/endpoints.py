"""Usage ingestion and the pricing catalogue, under /api/v1."""

from __future__ import annotations

import dataclasses
import json
import uuid
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession

from apex.billing.plans import plan_for
from apex.identity.deps import CacheDep, Principal, RequirePermission
from apex.identity.service import organization_view
from apex.kit.cache import TwoLevelCache
from apex.kit.db import call_after_commit
from apex.kit.deps import SessionDep
from apex.kit.errors import NotFound, UnsupportedMediaType
from apex.kit.text import Text
from apex.usage import service
from apex.usage.imports import UsageImporter
from apex.usage.models import nanos_to_usd
from apex.usage.pricing import ModelPrice, default_catalogue
from apex.usage.quota import RecordQuota
from apex.usage.repository import ImportRepository
from apex.usage.schemas import (
    ImportOut,
    IngestReport,
    PriceIn,
    PriceOut,
    SpendOut,
    TokensOut,
    UsageBatchIn,
    UsageMeterOut,
    UsageRecordOut,
)

router = APIRouter(prefix="/api/v1", tags=["usage"])

Provider = Annotated[str, Path(min_length=1, max_length=50, pattern=r"^[a-z0-9][a-z0-9._-]*$")]
ModelName = Annotated[str, Path(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][\w.:/-]*$")]


@router.post("/usage/events", response_model=IngestReport)
async def ingest_usage(
    body: UsageBatchIn,
    request: Request,
    principal: Annotated[Principal, RequirePermission("usage:write")],
    session: SessionDep,
    cache: CacheDep,
) -> Response:
    """Store up to 10,000 records. Each record's `id` is its idempotency key: a retried batch
    reports the records already stored as duplicates and stores nothing twice. Invalid
    records are rejected (field and reason); the valid ones of the batch are kept. Records
    past the plan's monthly quota are rejected with field `records`, naming the quota."""
    quota = await _record_quota(request, session, cache, principal)
    report = await service.ingest(
        session, principal.organization_id, body.records, quota=quota,
        now=request.app.state.clock.now(),
    )  # fmt: skip
    count_ingested(request, session, principal.organization_id, report)
    # Serialised by pydantic-core in one call: a verdict per record, up to 10,000 of them.
    return Response(report.model_dump_json(), media_type="application/json")


def count_ingested(
    request: Request, session: AsyncSession, organization_id: uuid.UUID, report: IngestReport
) -> None:
    """Operator metrics by verdict, and the organisation's product point, once committed."""
    state = request.app.state
    at = state.clock.now()

    async def counted() -> None:
        for verdict, count in (("accepted", report.accepted), ("duplicate", report.duplicates),
                               ("rejected", report.rejected)):  # fmt: skip
            if count:
                state.metrics.records.add(count, {"verdict": verdict})
        if report.accepted:
            state.telemetry.record(organization_id, "usage.records", report.accepted, at)

    call_after_commit(session, counted)


async def _record_quota(
    request: Request, session: AsyncSession, cache: TwoLevelCache, principal: Principal
) -> RecordQuota:
    organization = await organization_view(session, cache, principal.organization_id)
    return RecordQuota(
        request.app.state.quota,
        plan_for(organization["tier"] if organization else "free"),
        principal.organization_id,
        request.app.state.clock.now(),
        warnings=request.app.state.quota_warnings,
    )


@router.post(
    "/usage/events:import",
    response_model=ImportOut,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
        }
    },
)
async def import_usage(
    request: Request,
    principal: Annotated[Principal, RequirePermission("usage:write")],
    session: SessionDep,
    cache: CacheDep,
) -> JSONResponse:
    """Stream any number of records as NDJSON (one record per line; `Content-Encoding:
    gzip` to compress). They are stored in chunks of 5,000 as they arrive, each chunk in its
    own transaction; meanwhile `GET /api/v1/usage/imports` lists it (status `running`) with
    what its committed chunks stored. Same verdicts as `POST /usage/events`: lines that are
    not JSON, or invalid records, are rejected and listed at `problems_url`."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip"):
        raise UnsupportedMediaType("Content-Encoding must be gzip or absent.")
    quota = await _record_quota(request, session, cache, principal)
    await session.commit()  # hold no connection while the upload streams in
    state = request.app.state
    # A quota per chunk: a chunk that rolls back gives back only the units it took.
    importer = UsageImporter(
        state.database, state.clock, lambda: dataclasses.replace(quota, granted=0)
    )
    user_id = None if principal.is_api_key else principal.user_id
    import_id = await importer.start(principal.organization_id, user_id)
    await importer.run(
        principal.organization_id, import_id, request.stream(), gzip=encoding == "gzip"
    )
    async with state.database.unit_of_work(primary=True) as reading:
        row = await ImportRepository(reading).of_organization(principal.organization_id, import_id)
    assert row is not None
    return JSONResponse(
        ImportOut.model_validate(row).model_dump(mode="json"),
        headers={"Location": f"/api/v1/usage/imports/{import_id}"},
    )


@router.get("/usage/imports", response_model=list[ImportOut])
async def list_imports(
    principal: Annotated[Principal, RequirePermission("usage:read")],
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> list[ImportOut]:
    """The organisation's imports, newest first, running ones included."""
    rows = await ImportRepository(session).latest(principal.organization_id, limit)
    return [ImportOut.model_validate(row) for row in rows]


@router.get("/usage/imports/{import_id}", response_model=ImportOut)
async def get_import(
    import_id: uuid.UUID,
    principal: Annotated[Principal, RequirePermission("usage:read")],
    session: SessionDep,
) -> ImportOut:
    """An import's progress: what its committed chunks stored, then its outcome."""
    row = await ImportRepository(session).of_organization(principal.organization_id, import_id)
    if row is None:
        raise NotFound("No import with this id.")
    return ImportOut.model_validate(row)


@router.get("/usage/imports/{import_id}/problems")
async def get_import_problems(
    import_id: uuid.UUID,
    principal: Annotated[Principal, RequirePermission("usage:read")],
    session: SessionDep,
) -> Response:
    """NDJSON, in line order: `{"line": N, "id": …, "status": "rejected" | "accepted",
    "errors": […], "warnings": […]}` for each line rejected or stored with a warning."""
    imports = ImportRepository(session)
    if await imports.of_organization(principal.organization_id, import_id) is None:
        raise NotFound("No import with this id.")
    rows = await imports.problems(principal.organization_id, import_id)
    body = "".join(json.dumps({"line": r.line, **r.verdict}) + "\n" for r in rows)
    return Response(body, media_type="application/x-ndjson")


@router.get("/usage/events/{record_id}", response_model=UsageRecordOut)
async def get_usage_record(
    record_id: Annotated[Text, Path(min_length=1, max_length=200)],
    principal: Annotated[Principal, RequirePermission("usage:read")],
    session: SessionDep,
) -> UsageRecordOut:
    """One stored record, as Apex costed it, with the metadata you sent."""
    return await service.stored_record(session, principal.organization_id, record_id)


@router.get("/usage/meter", response_model=UsageMeterOut)
async def usage_meter(
    request: Request,
    principal: Annotated[Principal, RequirePermission("usage:read")],
    session: SessionDep,
    cache: CacheDep,
    period: Annotated[
        str | None,
        Query(pattern=r"^[0-9]{4}-(0[1-9]|1[0-2])$", description="YYYY-MM (UTC); default: now."),
    ] = None,
) -> UsageMeterOut:
    """Records, tokens and cost of one calendar month, as billing meters them (from the
    hourly rollups ingestion keeps, so it answers in milliseconds at any volume)."""
    month, window = service.month_of(period, request.app.state.clock.now())
    reading = await service.meter(session, principal.organization_id, window)
    organization = await organization_view(session, cache, principal.organization_id)
    tier = organization["tier"] if organization else "free"
    plan = plan_for(tier)
    return UsageMeterOut(
        organization_id=principal.organization_id,
        period=month,
        start=window.start,
        end=window.end,
        records=reading.records,
        tier=tier,
        records_included=plan.records_per_month,
        tokens=TokensOut(**dataclasses.asdict(reading.tokens)),
        cost_usd=nanos_to_usd(reading.cost_nanos),
    )


@router.get("/usage/spend", response_model=SpendOut)
async def usage_spend(
    request: Request,
    principal: Annotated[Principal, RequirePermission("usage:read")],
    session: SessionDep,
    period: Annotated[
        str | None,
        Query(
            pattern=r"^[0-9]{4}-(0[1-9]|1[0-2])$",
            description="YYYY-MM (UTC); default: the month of the latest usage.",
        ),
    ] = None,
) -> SpendOut:
    """Where a month's LLM money went: totals, each day (per workload), by workload, model
    and provider, and what the figures stand on. Read from the hourly rollups."""
    return await service.spend(
        session, principal.organization_id, period, request.app.state.clock.now()
    )


def _price_out(price: ModelPrice, overridden: bool) -> PriceOut:
    fields = price.model_dump(exclude={"derived", "aliases"})
    return PriceOut(**fields, aliases=list(price.aliases), overridden=overridden)


@router.get("/pricing", response_model=list[PriceOut])
async def list_prices(
    principal: Annotated[Principal, RequirePermission("usage:read")], session: SessionDep
) -> list[PriceOut]:
    """The organisation's effective prices: the shipped catalogue and its overrides."""
    catalogue = await service.catalogue_for(session, principal.organization_id)
    shipped = default_catalogue()
    return [
        _price_out(price, shipped.find(price.provider, price.model) != price)
        for price in sorted(catalogue, key=lambda p: (p.provider, p.model))
    ]


@router.put("/pricing/{provider}/{model}", response_model=PriceOut)
async def override_price(
    provider: Provider,
    model: ModelName,
    body: PriceIn,
    request: Request,
    principal: Annotated[Principal, RequirePermission("org:manage")],
    session: SessionDep,
) -> PriceOut:
    """Set a negotiated price for one model; records ingested afterwards are costed with it."""
    price = service.price_from(provider, model, body, request.app.state.clock.now().date())
    await service.set_override(session, principal.organization_id, price)
    return _price_out(price, True)


@router.delete("/pricing/{provider}/{model}", status_code=204)
async def remove_price_override(
    provider: Provider,
    model: ModelName,
    principal: Annotated[Principal, RequirePermission("org:manage")],
    session: SessionDep,
) -> None:
    if not await service.remove_override(session, principal.organization_id, provider, model):
        raise NotFound(f"No price override for {provider}/{model}.")
