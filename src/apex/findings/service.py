"""Findings: kept from a run's report, adopted or dismissed, verified, and billed on the
saving measured (the rules: `verification.py`)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy.ext.asyncio import AsyncSession

from apex.agents.models import AgentRun
from apex.audit import service as audit
from apex.billing.money import half_up_cents
from apex.findings import verification
from apex.findings.models import Finding, FindingStatus, SavingsMeasurement
from apex.findings.repository import FindingRepository, SavingsMeasurementRepository
from apex.kit.errors import Conflict
from apex.usage.models import NANOS_PER_USD
from apex.usage.rollups import WorkloadMeterRepository, WorkloadUsage
from apex.usage.spend import Window


async def record_findings(session: AsyncSession, run: AgentRun) -> int:
    """The report's recommendations (those the plan showed in full) become findings, in the
    transaction that stores the report."""
    report = run.report or {}
    findings = [
        Finding(
            organization_id=run.organization_id,
            run_id=run.id,
            rank=rec["rank"],
            kind=rec["kind"],
            title=rec["title"],
            workload=rec["workload"],
            provider=rec["provider"],
            model=rec["model"],
            recommendation=rec,
            status=FindingStatus.OPEN.value,
        )
        for rec in report.get("recommendations", [])
    ]
    session.add_all(findings)
    await session.flush()
    return len(findings)


async def _read(session: AsyncSession, finding: Finding, window: Window) -> WorkloadUsage:
    return await WorkloadMeterRepository(session).read(
        finding.organization_id, finding.workload, window
    )


def _require(finding: Finding, status: FindingStatus, action: str) -> None:
    if finding.status != status.value:
        raise Conflict(
            f"Finding {finding.id} is {finding.status}: only an {status.value} finding can be "
            f"{action}.",
            status=finding.status,
        )


async def adopt(
    session: AsyncSession,
    organization_id: uuid.UUID,
    finding_id: uuid.UUID,
    user_id: uuid.UUID,
    now: datetime,
) -> Finding:
    """The recommendation was put in place: take the workload's baseline and start the
    verification window."""
    finding = await FindingRepository(session).owned(organization_id, finding_id, lock=True)
    _require(finding, FindingStatus.OPEN, "adopted")
    windows = verification.windows_for(now)
    finding.status = FindingStatus.VERIFYING.value
    finding.adopted_at = now
    finding.adopted_by = user_id
    finding.verify_from = windows.verification.start
    finding.verify_until = windows.verification.end
    finding.baseline = verification.describe(await _read(session, finding, windows.baseline))
    await session.flush()
    await audit.record(
        session, "finding.adopted", now=now, organization_id=organization_id, actor_id=user_id,
        target=("finding", finding.id), title=finding.title,
    )  # fmt: skip
    return finding


async def dismiss(
    session: AsyncSession,
    organization_id: uuid.UUID,
    finding_id: uuid.UUID,
    reason: str,
    *,
    user_id: uuid.UUID,
    now: datetime,
) -> Finding:
    finding = await FindingRepository(session).owned(organization_id, finding_id, lock=True)
    _require(finding, FindingStatus.OPEN, "dismissed")
    finding.status = FindingStatus.DISMISSED.value
    finding.status_reason = reason
    await session.flush()
    await audit.record(
        session, "finding.dismissed", now=now, organization_id=organization_id,
        actor_id=user_id, target=("finding", finding.id), reason=reason,
    )  # fmt: skip
    return finding


async def decide(session: AsyncSession, finding_id: uuid.UUID) -> Finding | None:
    """The verification window is over: verified or not realised, with the readings. The
    baseline is read again (records of it may have arrived after adoption)."""
    finding = await FindingRepository(session).locked(finding_id)
    if finding is None or finding.status != FindingStatus.VERIFYING.value:
        return None  # another process decided first
    assert finding.adopted_at is not None
    assert finding.verify_until is not None
    windows = verification.windows_for(finding.adopted_at)
    before = await _read(session, finding, windows.baseline)
    after = await _read(session, finding, windows.verification)
    status, reason = verification.verdict(before, after)
    finding.baseline = verification.describe(before)
    finding.verification = {**verification.describe(after), "verdict": status.value}
    finding.status, finding.status_reason = status.value, reason
    if status == FindingStatus.VERIFIED:
        finding.billed_through = finding.verify_until
        finding.bill_until = finding.verify_until + timedelta(days=verification.SHARED_FOR_DAYS)
    await session.flush()
    return finding


@dataclass(frozen=True, slots=True)
class BilledSaving:
    finding: Finding
    measurement: SavingsMeasurement


def _baseline_nanos(finding: Finding) -> Decimal:
    assert finding.baseline is not None
    return Decimal(finding.baseline["cost_per_call_nanos"])


def _floor(finding: Finding, adopted: Sequence[Finding], until: datetime) -> Decimal | None:
    """The baseline of the next finding adopted on the workload before `until`: where this
    finding's share of the workload's saving stops."""
    later = [
        other
        for other in adopted
        if other.adopted_at is not None
        and finding.adopted_at is not None
        and finding.adopted_at < other.adopted_at < until
        and other.baseline
        and other.baseline.get("cost_per_call_nanos") is not None
    ]
    return _baseline_nanos(later[0]) if later else None


async def bill_savings(
    session: AsyncSession,
    organization_id: uuid.UUID,
    period: Window,
    share: Decimal,
) -> list[BilledSaving]:
    """Measure every verified finding's saving over the part of `period` not billed yet
    (within its year), store the measurement with its evidence, and move `billed_through`.
    Savings before `period` (a trial, the Free plan, the verification week) are not billed."""
    billed: list[BilledSaving] = []
    for finding in await FindingRepository(session).billable(organization_id, period.end):
        assert finding.billed_through is not None
        assert finding.bill_until is not None
        window = Window(
            max(finding.billed_through, period.start), min(period.end, finding.bill_until)
        )
        finding.billed_through = window.end
        if window.start >= window.end:
            continue
        actual = await _read(session, finding, window)
        before = await _read(
            session, finding, verification.windows_for(finding.adopted_at or window.start).baseline
        )
        adopted = await FindingRepository(session).adopted_on(organization_id, finding.workload)
        floor = _floor(finding, adopted, window.end)
        problem = verification.quality_problem(before, actual)
        if actual.calls < verification.MIN_CALLS:
            problem = None  # too few calls to judge quality on; the saving is what it is
        saving = (
            0 if problem else verification.saving_nanos(_baseline_nanos(finding), floor, actual)
        )
        amount = half_up_cents(share * Decimal(saving) / NANOS_PER_USD)
        measurement = SavingsMeasurement(
            organization_id=organization_id,
            finding_id=finding.id,
            window_start=window.start,
            window_end=window.end,
            calls=actual.priced_calls,
            saving_nanos=saving,
            share=str(share),
            amount_cents=amount,
            evidence={
                "baseline": finding.baseline,
                "actual": verification.describe(actual),
                "stops_at_cost_per_call_nanos": None if floor is None else str(floor),
                "quality": problem,
            },
        )
        await SavingsMeasurementRepository(session).add(measurement)
        billed.append(BilledSaving(finding, measurement))
    await session.flush()
    return billed
