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
    ranking_key,
    spend_breakdown,
    total_savings,
)
from apex.billing.plans import Plan
from apex.kit.db import Database
from apex.kit.failpoints import Failpoints
from apex.usage.pricing import Catalogue
from apex.usage.repository import SpendRepository
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
    breakdown = spend_breakdown(spend)
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
            found = await ctx.sandbox.run(name, spend, catalogue, runaway=_runaway(ctx.failpoints))
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
    facts = "\n".join(
        f"- {r['title']}: saves ${r['savings_monthly_usd']} a month ({r['confidence']} confidence)."
        for r in ranked[:5]
    )
    response = await ctx.ask(
        LLMRequest(
            system="Summarise these savings opportunities in two sentences. Do not add numbers.",
            prompt=facts or "- No waste was found in this period.",
        )
    )
    total = total_savings((r["workload"], _savings(r)) for r in ranked)
    await ctx.events.emit("partial_result", {"total_monthly_savings_usd": str(total)})
    return {"ranked": ranked, "total_monthly_savings_usd": str(total), "summary": response.text}


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


def _markdown(
    question: str, window: Window, breakdown: dict[str, Any], opt: dict[str, Any], summary: str
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
        f"Spend in the period: **${breakdown['total_usd']}** over {breakdown['calls']} calls; "
        f"projected monthly savings: **${opt['total_monthly_savings_usd']}**.",
        "",
        "## Spend by model",
        "",
        "| model | calls | cost (USD) | share |",
        "|---|---:|---:|---:|",
        *(
            f"| {m['model']} | {m['calls']} | {Decimal(m['cost_usd']):.2f} | {m['share']}% |"
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
    ]
    return "\n".join(lines) + "\n"


async def reporting(ctx: StepContext) -> dict[str, Any]:
    opt = ctx.outputs["optimisation"]
    breakdown = ctx.outputs["data"]["breakdown"]
    response = await ctx.ask(
        LLMRequest(
            system="Write a short executive summary of these findings. Do not add numbers.",
            prompt=opt["summary"] + "\n" + ctx.outputs["actions"]["intro"],
        ),
        stream=True,
    )
    report = {
        "question": ctx.question,
        "period": {"start": ctx.window.start.isoformat(), "end": ctx.window.end.isoformat()},
        "summary": response.text,
        "breakdown": breakdown,
        "recommendations": opt["ranked"],
        "total_monthly_savings_usd": opt["total_monthly_savings_usd"],
        "plan": ctx.outputs["actions"]["plan"],
        "failed_analyses": ctx.outputs["data"]["failed_analyses"],
        "not_in_plan": ctx.outputs["triage"]["not_in_plan"],
    }
    markdown = _markdown(ctx.question, ctx.window, breakdown, opt, response.text)
    return {"report": report, "markdown": markdown}


STEP_FUNCTIONS: dict[str, Step] = {
    "triage": triage,
    "data": data,
    "optimisation": optimisation,
    "actions": actions,
    "reporting": reporting,
}
