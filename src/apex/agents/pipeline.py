"""The sub-agents, one function per step: triage → data → optimisation → actions → reporting.

The LLM classifies (triage) and phrases (summaries); every number comes from the analyses.
Each step gets the outputs of the steps before it and returns a JSON-able dict, which the
runner stores; a step can therefore run again on another worker with the same inputs.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from apex.agents.budget import Budget
from apex.agents.events import RunEvents
from apex.agents.llm.base import LLMRequest, LLMResponse
from apex.agents.llm.resilience import LLMChain
from apex.agents.sandbox import RUNAWAY_CPU, RUNAWAY_MEMORY, AnalysisKilled, AnalysisSandbox
from apex.agents.tools.analyses import (
    RECOMMENDERS,
    Recommendation,
    coverage,
    derive_prices,
    inputs_for,
    ranking_key,
    spend_breakdown,
    total_savings,
)
from apex.billing.plans import Plan, upgrade_for_findings
from apex.kit.db import Database
from apex.kit.errors import UPGRADE_CHECKOUT
from apex.kit.failpoints import Failpoints
from apex.usage.pricing import Catalogue
from apex.usage.rollups import SpendRepository
from apex.usage.service import catalogue_for
from apex.usage.spend import Window


class RunCancelled(Exception):
    """The run was cancelled while a step was running."""


@dataclass
class StepContext:
    run_id: uuid.UUID
    organization_id: uuid.UUID
    question: str
    window: Window
    plan: Plan
    outputs: dict[str, dict[str, Any]]
    events: RunEvents
    llm: LLMChain
    budget: Budget
    database: Database
    sandbox: AnalysisSandbox
    failpoints: Failpoints
    is_cancelled: Callable[[], Awaitable[bool]]
    llm_calls: int = 0
    tokens: int = 0
    cost_usd: Decimal = field(default_factory=lambda: Decimal(0))

    async def check_cancelled(self) -> None:
        if await self.is_cancelled():
            raise RunCancelled("the run was cancelled")

    async def ask(self, request: LLMRequest, *, stream: bool = False) -> LLMResponse:
        """One LLM call within the run's budget, with fallbacks reported as events."""
        await self.check_cancelled()
        primary = self.llm.providers[0]
        price = self.llm.catalogue.find(primary.name, primary.model)
        reserved = self.budget.reserve(request, price)
        response: LLMResponse | None = None

        async def on_fallback(source: str, target: str, reason: str) -> None:
            await self.events.emit(
                "agent_fallback", {"from": source, "to": target, "reason": reason}
            )

        async def on_chunk(piece: str) -> None:
            await self.events.emit("stream_chunk", {"text": piece})

        try:
            response = await self.llm.complete(
                request, on_chunk=on_chunk if stream else None, on_fallback=on_fallback
            )
        finally:
            self.budget.settle(reserved, response)
        self.llm_calls += 1
        self.tokens += response.tokens.total
        self.cost_usd += response.cost_usd
        return response


Step = Callable[[StepContext], Awaitable[dict[str, Any]]]

CLASSIFY_SYSTEM = (
    "You route questions about LLM spend to analyses. Answer only with JSON "
    '{"intents": [...]} using names from this list: '
)


def _parse_intents(text: str, allowed: set[str]) -> list[str]:
    try:
        document = json.loads(text.strip().removeprefix("```json").removesuffix("```"))
    except ValueError:
        return []
    intents = document.get("intents") if isinstance(document, dict) else None
    if not isinstance(intents, list):
        return []
    return sorted({str(i) for i in intents} & allowed)


async def triage(ctx: StepContext) -> dict[str, Any]:
    await ctx.events.emit("agent_thinking", {"text": "Working out what the question asks."})
    known = set(RECOMMENDERS)
    response = await ctx.ask(
        LLMRequest(
            system=CLASSIFY_SYSTEM + ", ".join(sorted(known)),
            prompt=ctx.question,
            max_tokens=100,
            purpose="classify",
        )
    )
    intents = _parse_intents(response.text, known)
    # An answer we cannot use means the question is taken as general: every analysis.
    wanted = intents or sorted(known)
    allowed = sorted(set(wanted) & ctx.plan.analyses)
    return {
        "intents": intents,
        "analyses": allowed,
        "not_in_plan": sorted(set(wanted) - ctx.plan.analyses),
        "classified_by": response.provider,
    }


def _runaway(failpoints: Failpoints) -> str | None:
    if failpoints.fires("analysis.runaway_memory"):
        return RUNAWAY_MEMORY
    if failpoints.fires("analysis.runaway_cpu"):
        return RUNAWAY_CPU
    return None


async def data(ctx: StepContext) -> dict[str, Any]:
    await ctx.events.emit("tool_executing", {"tool": "spend_query"})
    async with ctx.database.unit_of_work() as session:
        spend = await SpendRepository(session).fetch(ctx.organization_id, ctx.window)
        catalogue: Catalogue = await catalogue_for(session, ctx.organization_id)
    # Models the catalogue does not know are still analysed when their records reported
    # what they cost: their prices are estimated from those costs.
    catalogue = catalogue.with_overrides(derive_prices(spend.fits, catalogue))
    breakdown = spend_breakdown(spend, catalogue)
    covered = coverage(spend, catalogue)
    await ctx.events.emit(
        "tool_completed",
        {"tool": "spend_query", "records": breakdown.calls, "groups": len(spend.groups)},
    )
    await ctx.events.emit(
        "partial_result",
        {"breakdown": {"total_usd": str(breakdown.total_usd), "calls": breakdown.calls}},
    )
    recommendations: list[Recommendation] = []
    failed: list[dict[str, str]] = []
    for name in ctx.outputs["triage"]["analyses"]:
        await ctx.check_cancelled()
        await ctx.events.emit("tool_executing", {"tool": name})
        try:
            found = await ctx.sandbox.run(
                name, inputs_for(name, spend), catalogue, runaway=_runaway(ctx.failpoints)
            )
        except AnalysisKilled as killed:
            failed.append({"analysis": name, "error": str(killed)})
            await ctx.events.emit("agent_error", {"tool": name, "error": str(killed)})
            await ctx.events.emit("tool_completed", {"tool": name, "status": "killed"})
            continue
        recommendations.extend(found)
        await ctx.events.emit(
            "tool_completed", {"tool": name, "status": "ok", "recommendations": len(found)}
        )
    return {
        "breakdown": breakdown.as_dict(),
        "recommendations": [r.as_dict() for r in recommendations],
        "failed_analyses": failed,
        "coverage": covered,
    }


def _savings(rec: dict[str, Any]) -> Decimal:
    return Decimal(rec["savings_monthly_usd"])


async def optimisation(ctx: StepContext) -> dict[str, Any]:
    ranked = sorted(
        ctx.outputs["data"]["recommendations"],
        key=lambda r: ranking_key(
            _savings(r), r["confidence"], r["kind"], r["workload"], r["model"]
        ),
    )
    for position, rec in enumerate(ranked, start=1):
        rec["rank"] = position
    await ctx.events.emit("agent_thinking", {"text": f"Ranked {len(ranked)} recommendations."})
    total = total_savings((r["workload"], _savings(r)) for r in ranked)
    shown, withheld = _plan_view(ctx.plan, ranked, total)
    facts = "\n".join(
        f"- {r['title']}: saves ${r['savings_monthly_usd']} a month ({r['confidence']} confidence)."
        for r in shown[:5]
    )
    if withheld:
        facts += f"\n- {withheld['message']}"
    response = await ctx.ask(
        LLMRequest(
            system="Summarise these savings opportunities in two sentences. Do not add numbers.",
            prompt=facts or "- No waste was found in this period.",
        )
    )
    await ctx.events.emit("partial_result", {"total_monthly_savings_usd": str(total)})
    return {
        "ranked": shown,
        "withheld": withheld,
        "total_monthly_savings_usd": str(total),
        "summary": response.text,
    }


def _plan_view(
    plan: Plan, ranked: list[dict[str, Any]], total: Decimal
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The findings the plan shows in full, and the rest counted and valued: what they add
    to the total (the total itself is always shown)."""
    if plan.findings_shown is None or len(ranked) <= plan.findings_shown:
        return ranked, None
    shown = ranked[: plan.findings_shown]
    value = total - total_savings((r["workload"], _savings(r)) for r in shown)
    upgrade = upgrade_for_findings(plan)
    count = len(ranked) - len(shown)
    plan_name = upgrade.tier.value.capitalize() if upgrade else "a paid"
    return shown, {
        "findings": count,
        "monthly_savings_usd": str(value),
        "upgrade": upgrade.tier.value if upgrade else None,
        "checkout": UPGRADE_CHECKOUT,
        "message": f"{count} more finding{'s' if count != 1 else ''} worth ${value}/month "
        f"on the {plan_name} plan.",
    }


async def actions(ctx: StepContext) -> dict[str, Any]:
    ranked = ctx.outputs["optimisation"]["ranked"]
    plan = [
        {
            "rank": rec["rank"],
            "title": rec["title"],
            "workload": rec["workload"],
            "savings_monthly_usd": rec["savings_monthly_usd"],
            "steps": rec["steps"],
        }
        for rec in ranked
    ]
    response = await ctx.ask(
        LLMRequest(
            system="Write a one-paragraph introduction to this implementation plan.",
            prompt="\n".join(f"- {item['title']}" for item in plan) or "- Nothing to change.",
        )
    )
    return {"plan": plan, "intro": response.text}


def coverage_lines(covered: dict[str, Any]) -> list[str]:
    """The report's coverage section as Markdown lines (the report, the CLI)."""
    if not covered:
        return []
    lines = [
        "## Coverage",
        "",
        f"Analysed ${covered['analysed_usd']} of ${covered['spend_usd']} "
        f"({covered['analysed_share']}%); left out ${covered['excluded_usd']}.",
        "",
    ]
    for item in covered["excluded"]:
        amount = f"${item['cost_usd']}" if item.get("cost_usd") is not None else "cost unknown"
        subject = item.get("model") or item.get("analysis") or "findings"
        lines.append(
            f"- **{item['reason']}** ({subject}, {amount}): {item['explanation']} "
            f"Fix: {item['fix']}"
        )
    for item in covered.get("estimated_prices", []):
        lines.append(
            f"- **estimated price** ({item['provider']}/{item['model']}, {item['workload']}, "
            f"${item['cost_usd']}): {item['price_basis']}. Fix: {item['fix']}"
        )
    if not covered["excluded"] and not covered.get("estimated_prices"):
        lines.append("- Nothing was left out.")
    return [*lines, ""]


def _markdown(
    question: str,
    window: Window,
    breakdown: dict[str, Any],
    opt: dict[str, Any],
    summary: str,
    covered: dict[str, Any],
) -> str:
    lines = [
        "# LLM spend report",
        "",
        f"Question: {question}",
        f"Period: {window.start:%Y-%m-%d} to {window.end:%Y-%m-%d}",
        "",
        "## Summary",
        "",
        summary,
        "",
        f"Spend in the period: **${breakdown['total_usd']}** over {breakdown['calls']:,} calls; "
        f"projected monthly savings: **${opt['total_monthly_savings_usd']}**.",
        "",
        "## Spend by model",
        "",
        "| model | calls | cost (USD) | share |",
        "|---|---:|---:|---:|",
        *(
            f"| {m['model']} | {m['calls']:,} | {Decimal(m['cost_usd']):.2f} | {m['share']}% |"
            for m in breakdown["by_model"]
        ),
        "",
        "## Recommendations",
        "",
        "| # | recommendation | current / month | projected | savings | confidence |",
        "|---:|---|---:|---:|---:|---|",
        *(
            f"| {r['rank']} | {r['title']} | ${r['current_monthly_usd']} | "
            f"${r['projected_monthly_usd']} | ${r['savings_monthly_usd']} | {r['confidence']} |"
            for r in opt["ranked"]
        ),
        *([f"\n{opt['withheld']['message']}"] if opt.get("withheld") else []),
        "",
        *coverage_lines(covered),
    ]
    return "\n".join(lines).rstrip("\n") + "\n"


def _report_coverage(ctx: StepContext, withheld: dict[str, Any] | None) -> dict[str, Any]:
    """The data step's coverage, with what the run itself left out: analyses that failed,
    analyses the question did not ask for, findings the plan does not show."""
    covered = dict(ctx.outputs["data"].get("coverage") or {})
    left_out = list(covered.get("excluded", []))
    for failure in ctx.outputs["data"]["failed_analyses"]:
        left_out.append(
            {
                "reason": "analysis_failed",
                "analysis": failure["analysis"],
                "cost_usd": None,
                "explanation": f"The {failure['analysis']} analysis did not finish: "
                f"{failure['error']}.",
                "fix": "Run the analysis again; if it fails again, narrow the period.",
            }
        )
    for name in ctx.outputs["triage"]["not_in_plan"]:
        left_out.append(
            {
                "reason": "not_in_plan",
                "analysis": name,
                "cost_usd": None,
                "explanation": f"The {name} analysis is not part of this plan.",
                "fix": "Upgrade the plan.",
            }
        )
    if withheld:
        left_out.append(
            {
                "reason": "plan_limit",
                "findings": withheld["findings"],
                "cost_usd": None,
                "monthly_savings_usd": withheld["monthly_savings_usd"],
                "explanation": withheld["message"],
                "fix": f"Upgrade to the {withheld['upgrade'] or 'next'} plan to see them "
                f"(POST {withheld['checkout']}).",
            }
        )
    covered["excluded"] = left_out
    return covered


async def reporting(ctx: StepContext) -> dict[str, Any]:
    opt = ctx.outputs["optimisation"]
    breakdown = ctx.outputs["data"]["breakdown"]
    response = await ctx.ask(
        LLMRequest(
            system="Write a short executive summary of these findings. Do not add numbers.",
            prompt=opt["summary"] + "\n\n" + ctx.outputs["actions"]["intro"],
        ),
        stream=True,
    )
    covered = _report_coverage(ctx, opt.get("withheld"))
    report = {
        "question": ctx.question,
        "period": {"start": ctx.window.start.isoformat(), "end": ctx.window.end.isoformat()},
        "summary": response.text,
        "breakdown": breakdown,
        "recommendations": opt["ranked"],
        "withheld": opt.get("withheld"),
        "total_monthly_savings_usd": opt["total_monthly_savings_usd"],
        "plan": ctx.outputs["actions"]["plan"],
        "coverage": covered,
        "failed_analyses": ctx.outputs["data"]["failed_analyses"],
        "not_in_plan": ctx.outputs["triage"]["not_in_plan"],
    }
    markdown = _markdown(ctx.question, ctx.window, breakdown, opt, response.text, covered)
    return {"report": report, "markdown": markdown}


STEP_FUNCTIONS: dict[str, Step] = {
    "triage": triage,
    "data": data,
    "optimisation": optimisation,
    "actions": actions,
    "reporting": reporting,
}
