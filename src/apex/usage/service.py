"""Ingestion of usage records and the organisation's effective pricing catalogue."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from apex.kit.errors import ValidationFailed
from apex.kit.ids import new_id
from apex.usage.models import NANOS_PER_USD, CostSource, PriceOverride
from apex.usage.pricing import Catalogue, ModelPrice, Tokens, cost_of, default_catalogue
from apex.usage.repository import PriceOverrideRepository, UsageRepository
from apex.usage.schemas import FieldProblem, IngestReport, PriceIn, RecordResult, UsageRecordIn


def usd_to_nanos(amount: Decimal) -> int:
    return int((amount * NANOS_PER_USD).to_integral_value(ROUND_HALF_EVEN))


def nanos_to_usd(nanos: int) -> Decimal:
    return Decimal(nanos) / NANOS_PER_USD


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
    organization_id: uuid.UUID, record: UsageRecordIn, cost_nanos: int, source: str
) -> dict[str, Any]:
    return {
        "id": new_id(),
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
        "metadata": record.metadata,
        "ingested_at": datetime.now(UTC),
    }


async def ingest(
    session: AsyncSession,
    organization_id: uuid.UUID,
    raw_records: Sequence[Any],
    *,
    catalogue: Catalogue | None = None,
) -> IngestReport:
    """Validate and store a batch. Bad records are rejected with the field and the reason;
    the good ones are kept. A record id the organisation sent before (in an earlier batch
    or earlier in this one) is a duplicate and changes nothing."""
    catalogue = catalogue or await catalogue_for(session, organization_id)
    results: list[RecordResult] = []
    rows: list[dict[str, Any]] = []
    pending: dict[str, int] = {}  # record id -> index in `results`
    for index, raw in enumerate(raw_records):
        try:
            record = UsageRecordIn.model_validate(raw)
        except ValidationError as exc:
            record_id = raw.get("id") if isinstance(raw, dict) else None
            results.append(
                RecordResult(
                    index=index,
                    id=record_id if isinstance(record_id, str) else None,
                    status="rejected",
                    errors=_problems(exc),
                )
            )
            continue
        if record.id in pending:
            results.append(RecordResult(index=index, id=record.id, status="duplicate"))
            continue
        if record.cost_usd is not None:
            cost, source = record.cost_usd, CostSource.REPORTED
        else:
            price = catalogue.find(record.provider, record.model)
            if price is None:
                results.append(
                    RecordResult(
                        index=index,
                        id=record.id,
                        status="rejected",
                        errors=[
                            FieldProblem(
                                field="model",
                                reason=f"{record.provider}/{record.model} is not in the pricing "
                                "catalogue: send cost_usd or add a price override",
                            )
                        ],
                    )
                )
                continue
            cost, source = cost_of(price, tokens_of(record)), CostSource.CATALOGUE
        pending[record.id] = len(results)
        results.append(RecordResult(index=index, id=record.id, status="accepted"))
        rows.append(_row(organization_id, record, usd_to_nanos(cost), source.value))
    inserted = await UsageRepository(session).insert_new(rows)
    for record_id, position in pending.items():
        if record_id not in inserted:
            results[position].status = "duplicate"
    report = IngestReport(results=results)
    for result in results:
        if result.status == "accepted":
            report.accepted += 1
        elif result.status == "duplicate":
            report.duplicates += 1
        else:
            report.rejected += 1
    return report


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
