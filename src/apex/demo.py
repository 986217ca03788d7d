"""`apex demo`: from nothing to a savings report, through the production code paths.

A demo organisation (Mid plan) gets a seeded, realistic month of LLM usage — six workloads
on two providers, user ids on every call, dated model names, with one planted instance of
every kind of waste the analyses find — ingested through the usage service, then a run of
the full agent pipeline through the job queue, exactly as a run started over the API.
The month is a fixed one (October 2026), so the figures are the same on every run.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import secrets
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from apex.agents.limits import RunSlots
from apex.agents.models import TERMINAL, AgentRun
from apex.agents.repository import RunRepository
from apex.agents.runner import build_runtime
from apex.agents.schemas import RunIn
from apex.agents.service import start_run
from apex.agents.tasks import register_agent_tasks
from apex.billing.plans import plan_for
from apex.identity.models import Tier
from apex.identity.passwords import hash_password
from apex.identity.repository import OrganizationRepository
from apex.identity.service import create_account
from apex.kit.clock import Clock, SystemClock
from apex.kit.db import Database
from apex.kit.failpoints import Failpoints
from apex.kit.queue import JobQueue
from apex.kit.redis import create_redis
from apex.settings import Settings
from apex.usage.service import ingest

DEMO_SLUG = "apex-demo"
DEMO_EMAIL = "demo@apex.invalid"
DEMO_QUESTION = "Where are we wasting money on LLMs, and what should we change first?"
DEMO_PERIOD_END = datetime(2026, 11, 1, tzinfo=UTC)
DEMO_DAYS = 30
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Workload:
    name: str
    provider: str
    model: str
    calls: int
    input_tokens: tuple[int, int]
    output_tokens: tuple[int, int]
    interactive: bool = True  # False: a scheduled job, 01:00-05:00 UTC, seconds per call
    prefix_tokens: int = 0  # a shared prompt prefix, sent uncached (caching waste)
    cached: bool = False  # already uses prompt caching
    repeat_share: float = 0.0  # share of calls repeating one of a few prompts
    failure_share: float = 0.0  # errors and timeouts
    reasoning: bool = False


WORKLOADS = (
    # Short classification on a frontier model (logged under its dated name): right-sizing.
    Workload("ticket-triage", "openai", "gpt-4o-2024-08-06", 9000, (400, 900), (5, 40)),
    # A long shared system prompt, never cached: prompt caching.
    Workload(
        "support-chat", "anthropic", "claude-sonnet-4-5", 3000, (3500, 5000), (150, 500),
        prefix_tokens=3000,
    ),
    # Nobody waits for it: batch API.
    Workload(
        "nightly-digest", "openai", "gpt-4.1", 600, (5000, 8000), (600, 1200), interactive=False
    ),
    # The same questions again and again: response caching.
    Workload("faq-bot", "openai", "gpt-4o-mini", 5000, (700, 1200), (80, 250), repeat_share=0.6),
    # Huge contexts for short answers, and calls that fail: trimming and error waste.
    Workload(
        "research-agent", "openai", "gpt-4.1", 1500, (20000, 40000), (300, 700),
        failure_share=0.12,
    ),
    # Healthy: caching already on, a model that fits the task.
    Workload(
        "code-review", "anthropic", "claude-opus-4-1", 400, (6000, 9000), (400, 900),
        prefix_tokens=2000, cached=True,
    ),
)  # fmt: skip


def _hash(*parts: object) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:32]


def generate_month(seed: int, end: datetime) -> Iterator[dict[str, Any]]:
    """A month of usage records ending at `end`, the same for the same seed."""
    rng = random.Random(seed)  # noqa: S311 - reproducible demo data, not a secret
    start = end - timedelta(days=DEMO_DAYS)
    for workload in WORKLOADS:
        for n in range(workload.calls):
            if workload.interactive:
                at = start + timedelta(seconds=rng.uniform(0, DEMO_DAYS * 86_400 - 1))
            else:  # the nightly job: every call between 01:00 and 05:00 UTC
                day = start + timedelta(days=rng.randrange(DEMO_DAYS))
                at = day + timedelta(hours=1, seconds=rng.uniform(0, 4 * 3600 - 1))
            prompt = rng.randint(*workload.input_tokens)
            output = rng.randint(*workload.output_tokens)
            repeated = rng.random() < workload.repeat_share
            prompt_id = rng.randint(1, 25) if repeated else n
            if repeated:
                prompt = workload.input_tokens[0] + prompt_id * 10
                output = workload.output_tokens[0] + prompt_id
            roll = rng.random()
            status = "ok"
            if roll < workload.failure_share:
                status = "timeout" if roll < workload.failure_share / 3 else "error"
                output = 0
            cached = workload.prefix_tokens if workload.cached and n % 20 else 0
            written = workload.prefix_tokens if workload.cached and not n % 20 else 0
            record: dict[str, Any] = {
                "id": f"demo-{workload.name}-{n}",
                "timestamp": at.isoformat(),
                "provider": workload.provider,
                "model": workload.model,
                "workload": workload.name,
                "input_tokens": prompt - cached - written,
                "cached_input_tokens": cached,
                "cache_write_tokens": written,
                "output_tokens": output,
                "latency_ms": _latency(rng, workload, output, status),
                "status": status,
                "prompt_hash": _hash(workload.name, prompt_id),
                # Gateways put a user (or, for jobs, a tenant) id on every call.
                "end_user": f"user-{rng.randint(1, 400)}"
                if workload.interactive
                else f"tenant-{rng.randint(1, 60)}",
            }
            if workload.prefix_tokens:
                record["prefix_hash"] = _hash(workload.name, "system-prompt-v3")
                record["prefix_tokens"] = workload.prefix_tokens
            yield record


def _latency(rng: random.Random, workload: Workload, output: int, status: str) -> int:
    if status == "timeout":
        return 30_000
    if not workload.interactive:
        return rng.randint(8_000, 30_000)  # long generations nobody waits for
    return 300 + output * 12


def total_records() -> int:
    return sum(w.calls for w in WORKLOADS)


@dataclass
class DemoResult:
    organization_id: uuid.UUID
    accepted: int
    duplicates: int
    run: AgentRun
    password: str | None


async def _demo_organization(database: Database) -> tuple[uuid.UUID, str | None]:
    """The demo organisation's id, and the password of its new owner account (None when
    the organisation was made by an earlier demo)."""
    async with database.unit_of_work() as session:
        organizations = OrganizationRepository(session)
        existing = await organizations.by_slug(DEMO_SLUG)
        if existing is not None:
            return existing.id, None
        password = secrets.token_urlsafe(12)
        _, organization = await create_account(
            session,
            email=DEMO_EMAIL,
            display_name="Demo",
            password_hash=await hash_password(password),
            organization_name="Apex Demo",
            organization_slug=DEMO_SLUG,
        )
        organization.tier = Tier.MID.value  # every analysis is on the Mid plan
        return organization.id, password


async def run_demo(
    settings: Settings,
    *,
    seed: int = 7,
    on_ingest: Progress | None = None,
    on_event: Callable[[str], None] | None = None,
    clock: Clock | None = None,
    batch_size: int = 1000,
) -> DemoResult:
    clock = clock or SystemClock()
    database = Database(settings)
    redis = create_redis(settings)
    runtime = build_runtime(settings, database, redis, clock, Failpoints(settings.failpoints))
    queue = JobQueue(settings)
    register_agent_tasks(queue, runtime if settings.redis_url is None else None)
    database.after_commit(queue.after_commit)
    await queue.start()
    try:
        organization_id, password = await _demo_organization(database)
        accepted = duplicates = done = 0
        total = total_records()
        batch: list[dict[str, Any]] = []
        end = DEMO_PERIOD_END
        for record in generate_month(seed, end):
            batch.append(record)
            if len(batch) == batch_size:
                async with database.unit_of_work() as session:
                    report = await ingest(session, organization_id, batch, now=clock.now())
                accepted, duplicates = accepted + report.accepted, duplicates + report.duplicates
                done += len(batch)
                batch = []
                if on_ingest:
                    on_ingest(done, total)
        if batch:
            async with database.unit_of_work() as session:
                report = await ingest(session, organization_id, batch, now=clock.now())
            accepted, duplicates = accepted + report.accepted, duplicates + report.duplicates
            if on_ingest:
                on_ingest(total, total)
        async with database.unit_of_work() as session:
            run = await start_run(
                session,
                organization_id=organization_id,
                user_id=None,
                # Exactly the generated month, so the figures are the same on every run.
                body=RunIn(
                    question=DEMO_QUESTION,
                    period_start=end - timedelta(days=DEMO_DAYS),
                    period_end=end,
                ),
                settings=settings,
                slots=RunSlots(redis),
                now=clock.now(),
            )
        run = await _wait(database, run.id, on_event)
        return DemoResult(organization_id, accepted, duplicates, run, password)
    finally:
        await queue.stop()
        await redis.aclose()
        await database.dispose()


async def _wait(
    database: Database, run_id: uuid.UUID, on_event: Callable[[str], None] | None
) -> AgentRun:
    seen = ""
    while True:
        async with database.unit_of_work() as session:
            run = await RunRepository(session).get_or_raise(run_id)
        if on_event and run.status != seen:
            on_event(run.status)
            seen = run.status
        if run.status in TERMINAL:
            return run
        await asyncio.sleep(0.1)


def projected_bill(tier: str, monthly_savings: Decimal) -> tuple[Decimal, Decimal, Decimal]:
    """(base fee, share of the savings, total) the plan would bill if the savings are verified."""
    plan = plan_for(tier)
    share = (monthly_savings * plan.savings_share).quantize(Decimal("0.01"))
    return plan.base_fee_usd, share, plan.base_fee_usd + share
