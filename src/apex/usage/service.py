"""Ingestion of usage records and the organisation's effective pricing catalogue."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from apex.billing.plans import Plan, plan_for
from apex.identity.repository import OrganizationRepository
from apex.kit.db import call_after_commit, call_after_rollback
from apex.kit.errors import NotFound, ValidationFailed
from apex.kit.ids import new_ids
from apex.usage.models import CostSource, PriceOverride, nanos_to_usd, usd_to_nanos
from apex.usage.pricing import (
    Catalogue,
    ModelPrice,
    Tokens,
    cost_of,
    default_catalogue,
    fine_tune_base,
    is_fine_tune,
)
from apex.usage.repository import PriceOverrideRepository, UsageRepository
from apex.usage.rollups import Meter, MeterRepository, RollupRepository, SpendRepository
from apex.usage.schemas import (
    DaySpend,
    FieldProblem,
    IngestReport,
    ModelSpend,
    PriceIn,
    ProviderSpend,
    RecordResult,
    SpendCoverage,
    SpendLine,
    SpendOut,
    SpendRow,
    UsageRecordIn,
    UsageRecordOut,
    WorkloadSpend,
    echo,
)
from apex.usage.spend import BreakdownRow, Window, month_start, next_month

if TYPE_CHECKING:  # the quota counts in Redis, which the CLI does not use
    from apex.usage.quota import RecordQuota


def tokens_of(record: UsageRecordIn) -> Tokens:
    return Tokens(
        input=record.input_tokens,
        cached_input=record.cached_input_tokens,
        cache_write=record.cache_write_tokens,
        output=record.output_tokens,
        reasoning=record.reasoning_tokens,
    )


async def catalogue_for(session: AsyncSession, organization_id: uuid.UUID) -> Catalogue:
    """The shipped catalogue with the organisation's negotiated prices applied."""
    overrides = await PriceOverrideRepository(session).for_organization(organization_id)
    base = default_catalogue()
    if not overrides:
        return base
    return base.with_overrides([ModelPrice.model_validate(row.price) for row in overrides])


def _problems(exc: ValidationError) -> list[FieldProblem]:
    return [
        FieldProblem(
            field=".".join(str(part) for part in error["loc"]) or "record",
            reason=str(error["msg"]).removeprefix("Value error, "),
        )
        for error in exc.errors()
    ]


def _row(
    row_id: uuid.UUID,
    organization_id: uuid.UUID,
    record: UsageRecordIn,
    cost_nanos: int,
    source: str,
    now: datetime,
) -> dict[str, Any]:
    """The row of an accepted record; `store_batch` adds its retention class."""
    return {
        "id": row_id,
        "organization_id": organization_id,
        "record_id": record.id,
        "occurred_at": record.timestamp.astimezone(UTC),
        "provider": record.provider,
        "model": record.model,
        "workload": record.workload,
        "input_tokens": record.input_tokens,
        "cached_input_tokens": record.cached_input_tokens,
        "cache_write_tokens": record.cache_write_tokens,
        "output_tokens": record.output_tokens,
        "reasoning_tokens": record.reasoning_tokens,
        "latency_ms": record.latency_ms,
        "status": record.status,
        "cost_nanos": cost_nanos,
        "cost_source": source,
        "prompt_hash": record.prompt_hash,
        "prefix_hash": record.prefix_hash,
        "prefix_tokens": record.prefix_tokens,
        "end_user": record.end_user,
        "attributes": record.metadata,
        "ingested_at": now,
    }


def _rejected(index: int, raw: Any, problems: list[FieldProblem]) -> RecordResult:
    record_id = raw.get("id") if isinstance(raw, dict) else None
    return RecordResult(
        index=index,
        id=echo(record_id) if isinstance(record_id, str) else None,
        status="rejected",
        errors=problems,
    )


def _unpriced_warning(record: UsageRecordIn) -> FieldProblem:
    where = "PUT /api/v1/pricing/{provider}/{model}"
    if base := fine_tune_base(record.model):  # one price covers every fine-tune of the base
        where = f"PUT /api/v1/pricing/{echo(record.provider)}/{echo(base)}, for all its fine-tunes"
    return FieldProblem(
        field="model",
        reason=f"{echo(record.provider)}/{echo(record.model)} is not in the pricing catalogue: "
        "stored unpriced and left out of the analyses until it has a price (send cost_usd, "
        f"or set one with {where})",
    )


def _costed(record: UsageRecordIn, catalogue: Catalogue) -> tuple[int, CostSource]:
    if record.cost_usd is not None:
        return usd_to_nanos(record.cost_usd), CostSource.REPORTED
    price = catalogue.find(record.provider, record.model)
    if price is None:
        return 0, CostSource.UNPRICED
    return usd_to_nanos(cost_of(price, tokens_of(record))), CostSource.CATALOGUE


@dataclass
class PreparedBatch:
    """A batch validated and costed, not stored yet: each element's verdict so far, and the
    rows of the records to store. Made without the database (`prepare_batch`), so a file
    import prepares its next batch while the previous one is being stored."""

    results: list[RecordResult]
    rows: list[dict[str, Any]]
    pending: dict[str, int]  # record id -> its verdict's index in `results`


async def ingest(
    session: AsyncSession,
    organization_id: uuid.UUID,
    raw_records: Sequence[Any],
    *,
    now: datetime,
    catalogue: Catalogue | None = None,
    quota: RecordQuota | None = None,
) -> IngestReport:
    """Validate and store a batch; every element gets its own verdict (`prepare_batch`,
    then `store_batch`)."""
    catalogue = catalogue or await catalogue_for(session, organization_id)
    prepared = prepare_batch(raw_records, catalogue=catalogue, organization_id=organization_id,
                             now=now)  # fmt: skip
    return await store_batch(session, organization_id, prepared, quota=quota)


def prepare_batch(
    raw_records: Sequence[Any], *, catalogue: Catalogue, organization_id: uuid.UUID, now: datetime
) -> PreparedBatch:
    """Validate and cost a batch. Bad records (and elements that are not objects) are
    rejected with the field and the reason; the good ones are kept. A record id repeated
    within the batch is a duplicate. A record of a model without a price is kept unpriced,
    with a warning: nothing the customer sent is dropped. `now` (the caller's clock) is when
    the records arrived. CPU only: safe to run in a thread."""
    results: list[RecordResult] = []
    rows: list[dict[str, Any]] = []
    pending: dict[str, int] = {}
    row_ids = iter(new_ids(len(raw_records)))
    for index, raw in enumerate(raw_records):
        if not isinstance(raw, dict):
            problem = FieldProblem(field="record", reason="must be a JSON object")
            results.append(_rejected(index, raw, [problem]))
            continue
        try:
            record = UsageRecordIn.model_validate(raw)
        except ValidationError as exc:
            results.append(_rejected(index, raw, _problems(exc)))
            continue
        if record.id in pending:
            results.append(RecordResult(index=index, id=record.id, status="duplicate"))
            continue
        cost_nanos, source = _costed(record, catalogue)
        warnings = [_unpriced_warning(record)] if source is CostSource.UNPRICED else []
        pending[record.id] = len(results)
        results.append(
            RecordResult(index=index, id=record.id, status="accepted", warnings=warnings)
        )
        rows.append(_row(next(row_ids), organization_id, record, cost_nanos, source.value, now))
    return PreparedBatch(results, rows, pending)


async def store_batch(
    session: AsyncSession,
    organization_id: uuid.UUID,
    batch: PreparedBatch,
    *,
    quota: RecordQuota | None = None,
) -> IngestReport:
    """Store a prepared batch (once: its verdicts are completed in place). A record id the
    organisation sent before (in an earlier batch) is a duplicate and changes nothing.
    With a `quota`, records past the plan's monthly quota are rejected (field `records`),
    and those that turn out to be duplicates, or whose transaction rolls back, give their
    units back. Records are kept for the retention of the plan the organisation is on now."""
    plan = quota.plan if quota is not None else await _plan_of(session, organization_id)
    results, rows, pending = batch.results, batch.rows, batch.pending
    for row in rows:
        row["retention_days"] = plan.retention_days
    if quota is not None and quota.limit is not None:
        rows = await _within_quota(session, organization_id, quota, rows, pending, results)
    inserted = await UsageRepository(session).insert_new(rows)
    await RollupRepository(session).add(organization_id, inserted)
    if quota is not None:  # stored meanwhile by a concurrent batch: no quota used after all
        await quota.give_back(quota.granted - len(inserted))
    for record_id, position in pending.items():
        if record_id not in inserted:
            results[position].status = "duplicate"
            results[position].warnings = []
    report = IngestReport(results=results)
    for result in results:
        if result.status == "accepted":
            report.accepted += 1
        elif result.status == "duplicate":
            report.duplicates += 1
        else:
            report.rejected += 1
    return report


async def _plan_of(session: AsyncSession, organization_id: uuid.UUID) -> Plan:
    organization = await OrganizationRepository(session).get_or_raise(organization_id)
    return plan_for(organization.tier)


async def _within_quota(
    session: AsyncSession,
    organization_id: uuid.UUID,
    quota: RecordQuota,
    rows: list[dict[str, Any]],
    pending: dict[str, int],
    results: list[RecordResult],
) -> list[dict[str, Any]]:
    """The rows to insert: those already stored (duplicates, which use no quota) and the new
    ones that fit the month's quota; the new ones that do not become rejections."""
    ids = [row["record_id"] for row in rows]
    stored = await UsageRepository(session).stored_ids(organization_id, ids)
    new = [row for row in rows if row["record_id"] not in stored]
    granted = await quota.take(len(new))
    # On rollback, whatever is still held goes back (not what duplicates already returned).
    call_after_rollback(session, lambda: quota.give_back(quota.granted))
    if quota.crossed:
        call_after_commit(session, quota.warn)
    for row in new[granted:]:
        position = pending.pop(row["record_id"])
        results[position] = RecordResult(
            index=results[position].index,
            id=row["record_id"],
            status="rejected",
            errors=[FieldProblem(field="records", reason=quota.refusal())],
        )
    refused = {row["record_id"] for row in new[granted:]}
    return [row for row in rows if row["record_id"] not in refused]


async def stored_record(
    session: AsyncSession, organization_id: uuid.UUID, record_id: str
) -> UsageRecordOut:
    row = await UsageRepository(session).by_record_id(organization_id, record_id)
    if row is None:
        raise NotFound("No usage record with this id.")
    return UsageRecordOut(
        id=row.record_id,
        timestamp=row.occurred_at,
        provider=row.provider,
        model=row.model,
        workload=row.workload,
        input_tokens=row.input_tokens,
        cached_input_tokens=row.cached_input_tokens,
        cache_write_tokens=row.cache_write_tokens,
        output_tokens=row.output_tokens,
        reasoning_tokens=row.reasoning_tokens,
        latency_ms=row.latency_ms,
        status=row.status,
        cost_usd=nanos_to_usd(row.cost_nanos),
        cost_source=row.cost_source,
        prompt_hash=row.prompt_hash,
        prefix_hash=row.prefix_hash,
        prefix_tokens=row.prefix_tokens,
        end_user=row.end_user,
        metadata=row.attributes,
    )


def price_from(provider: str, model: str, body: PriceIn, today: date) -> ModelPrice:
    """The catalogue entry for a negotiated price (its own rules checked: 422, never 500)."""
    try:
        return _model_price(provider, model, body, today)
    except ValidationError as exc:
        problems = _problems(exc)
        raise ValidationFailed(
            "Invalid price: " + "; ".join(f"{p.field}: {p.reason}" for p in problems),
            errors=[{"field": p.field, "message": p.reason} for p in problems],
        ) from None


def _model_price(provider: str, model: str, body: PriceIn, today: date) -> ModelPrice:
    return ModelPrice(
        provider=provider,
        model=model,
        capability=body.capability,
        context_window=body.context_window,
        input=body.input,
        cached_input=body.cached_input if body.cached_input is not None else body.input,
        cache_write=body.cache_write if body.cache_write is not None else body.input,
        output=body.output,
        batch_discount=body.batch_discount,
        price_date=today,
        source=body.source,
        fine_tuned=is_fine_tune(model),
    )


async def set_override(
    session: AsyncSession, organization_id: uuid.UUID, price: ModelPrice
) -> PriceOverride:
    repository = PriceOverrideRepository(session)
    existing = await repository.find(organization_id, price.provider, price.model)
    document = price.model_dump(mode="json")
    if existing is not None:
        existing.price = document
        await session.flush()
        return existing
    return await repository.add(
        PriceOverride(
            organization_id=organization_id,
            provider=price.provider,
            model=price.model,
            price=document,
        )
    )


async def remove_override(
    session: AsyncSession, organization_id: uuid.UUID, provider: str, model: str
) -> bool:
    repository = PriceOverrideRepository(session)
    existing = await repository.find(organization_id, provider, model)
    if existing is None:
        return False
    await repository.delete(existing)
    return True


def month_of(period: str | None, now: datetime) -> tuple[str, Window]:
    """A UTC calendar month ('YYYY-MM'; default: the one `now` is in) and its window."""
    try:
        start = (
            datetime.strptime(period, "%Y-%m").replace(tzinfo=UTC)
            if period is not None
            else month_start(now)
        )
        end = next_month(start)
    except (ValueError, OverflowError):  # year 0, or a month past the calendar's end
        raise ValidationFailed(
            "period must be a month from 0001-01 to 9999-11, as YYYY-MM.",
            errors=[{"field": "period", "message": "not a month Apex can meter"}],
        ) from None
    return f"{start:%Y-%m}", Window(start, end)


async def meter(session: AsyncSession, organization_id: uuid.UUID, window: Window) -> Meter:
    return await MeterRepository(session).read(organization_id, window)


# --- the spend page ------------------------------------------------------------------------


async def spend(
    session: AsyncSession, organization_id: uuid.UUID, period: str | None, now: datetime
) -> SpendOut:
    """One month's spend (`period`; default: the month of the latest usage, or now's)."""
    rollups = SpendRepository(session)
    if period is None:
        period = f"{await rollups.latest_hour(organization_id) or now:%Y-%m}"
    month, window = month_of(period, now)
    rows = await rollups.breakdown(organization_id, window)
    by_workload = _grouped(rows, lambda r: r.workload)
    by_model = _grouped(rows, lambda r: (r.provider, r.model))
    by_provider = _grouped(rows, lambda r: r.provider)
    by_row = _grouped(rows, lambda r: (r.workload, r.provider, r.model))
    return SpendOut(
        period=month,
        start=window.start,
        end=window.end,
        months=await rollups.months(organization_id),
        total=SpendLine(**_sums(rows)),
        coverage=_coverage(rows),
        days=[_day(day, of) for day, of in _grouped(rows, lambda r: r.day)],
        workloads=_largest(WorkloadSpend(workload=w, **_sums(of)) for w, of in by_workload),
        models=_largest(ModelSpend(provider=p, model=m, **_sums(of)) for (p, m), of in by_model),
        providers=_largest(ProviderSpend(provider=p, **_sums(of)) for p, of in by_provider),
        rows=_largest(
            SpendRow(workload=w, provider=p, model=m, **_sums(of)) for (w, p, m), of in by_row
        ),
    )


def _coverage(rows: Sequence[BreakdownRow]) -> SpendCoverage:
    unpriced, reported = sum(r.unpriced_calls for r in rows), sum(r.reported_calls for r in rows)
    return SpendCoverage(
        catalogue_calls=sum(r.calls for r in rows) - unpriced - reported,
        reported_calls=reported,
        unpriced_calls=unpriced,
    )


def _day(day: str, rows: Sequence[BreakdownRow]) -> DaySpend:
    workloads = {
        workload: nanos_to_usd(sum(r.cost_nanos for r in of))
        for workload, of in _grouped(rows, lambda r: r.workload)
    }
    return DaySpend(day=date.fromisoformat(day), workloads=workloads, **_sums(rows))


K = TypeVar("K")
L = TypeVar("L", bound=SpendLine)


def _grouped(
    rows: Sequence[BreakdownRow], key: Callable[[BreakdownRow], K]
) -> list[tuple[K, list[BreakdownRow]]]:
    groups: dict[K, list[BreakdownRow]] = {}
    for row in rows:
        groups.setdefault(key(row), []).append(row)
    return list(groups.items())


def _sums(rows: Sequence[BreakdownRow]) -> dict[str, Any]:
    return {
        "calls": sum(r.calls for r in rows),
        "input_tokens": sum(r.input_tokens for r in rows),
        "output_tokens": sum(r.output_tokens for r in rows),
        "cost_usd": nanos_to_usd(sum(r.cost_nanos for r in rows)),
    }


def _largest(lines: Iterable[L]) -> list[L]:
    return sorted(lines, key=lambda line: (-line.cost_usd, -line.calls))
