"""Findings under /api/v1/findings: what the reports recommended, acted on."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request

from apex.billing.money import dollars
from apex.findings import service
from apex.findings.models import Finding, FindingStatus
from apex.findings.repository import FindingRepository, SavingsMeasurementRepository
from apex.findings.schemas import DismissIn, FindingOut, SavingOut
from apex.identity.deps import Principal, RequirePermission
from apex.kit.deps import SessionDep
from apex.usage.models import nanos_to_usd

router = APIRouter(prefix="/api/v1/findings", tags=["findings"])
Reader = Annotated[Principal, RequirePermission("reports:read")]
Actor = Annotated[Principal, RequirePermission("findings:act")]


async def _out(session: SessionDep, finding: Finding) -> FindingOut:
    measured = await SavingsMeasurementRepository(session).of_finding(finding.id)
    rec = finding.recommendation
    savings = [
        SavingOut(
            window_start=m.window_start,
            window_end=m.window_end,
            calls=m.calls,
            saving_usd=nanos_to_usd(m.saving_nanos),
            share=m.share,
            amount_usd=dollars(m.amount_cents),
            invoice_id=m.invoice_id,
            evidence=m.evidence,
        )
        for m in measured
    ]
    return FindingOut(
        id=finding.id,
        run_id=finding.run_id,
        rank=finding.rank,
        kind=finding.kind,
        title=finding.title,
        workload=finding.workload,
        provider=finding.provider,
        model=finding.model,
        current_monthly_usd=rec["current_monthly_usd"],
        projected_monthly_usd=rec["projected_monthly_usd"],
        savings_monthly_usd=rec["savings_monthly_usd"],
        confidence=rec["confidence"],
        evidence=rec.get("evidence", {}),
        steps=rec.get("steps", []),
        status=finding.status,
        status_reason=finding.status_reason,
        adopted_at=finding.adopted_at,
        verify_until=finding.verify_until,
        baseline=finding.baseline,
        verification=finding.verification,
        verified_savings_usd=nanos_to_usd(sum(m.saving_nanos for m in measured)),
        savings=savings,
    )


@router.get("", response_model=list[FindingOut])
async def list_findings(
    principal: Reader,
    session: SessionDep,
    status: Annotated[
        FindingStatus | None, Query(description="Only findings in this state.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> list[FindingOut]:
    """The organisation's findings, newest run first, in report order."""
    found = await FindingRepository(session).of_organization(
        principal.organization_id, status=status, limit=limit, offset=offset
    )
    return [await _out(session, finding) for finding in found]


@router.get("/{finding_id}", response_model=FindingOut)
async def get_finding(finding_id: uuid.UUID, principal: Reader, session: SessionDep) -> FindingOut:
    finding = await FindingRepository(session).owned(principal.organization_id, finding_id)
    return await _out(session, finding)


@router.post("/{finding_id}/adopt", response_model=FindingOut)
async def adopt(
    finding_id: uuid.UUID, request: Request, principal: Actor, session: SessionDep
) -> FindingOut:
    """The recommendation is in place: the workload's baseline is taken now and its saving
    verified over the next 7 days; once verified, the plan's share of the saving measured
    is billed with each renewal (docs/billing.md)."""
    finding = await service.adopt(
        session, principal.organization_id, finding_id, principal.user_id,
        request.app.state.clock.now(),
    )  # fmt: skip
    return await _out(session, finding)


@router.post("/{finding_id}/dismiss", response_model=FindingOut)
async def dismiss(
    finding_id: uuid.UUID, body: DismissIn, request: Request, principal: Actor, session: SessionDep
) -> FindingOut:
    finding = await service.dismiss(
        session, principal.organization_id, finding_id, body.reason,
        user_id=principal.user_id, now=request.app.state.clock.now(),
    )  # fmt: skip
    return await _out(session, finding)
