"""Tier 4 — agents: the LLM layer against a real OpenAI-compatible server over HTTP, and the
multi-agent pipeline in real `apex worker` processes over PostgreSQL and Redis."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
import redis

from apex.agents.llm import build_chain
from apex.agents.llm.base import LLMRequest
from apex.agents.llm.resilience import LLMChain
from apex.agents.models import STEPS
from apex.agents.tools.analyses import RECOMMENDERS
from apex.settings import Settings
from tests.harness import ApexServer, ApexWorker, PostgresCluster, RedisServer
from tests.harness.llm import LlmServer
from tests.harness.procs import wait_until
from tests.integration.critical.conftest import bearer, database_name, findings, signup

pytestmark = pytest.mark.critical

# gpt-4o-mini, USD per million tokens (pricing.json): input 0.15, cached input 0.075, output 0.60.
MINI_INPUT, MINI_CACHED, MINI_OUTPUT = Decimal("0.15"), Decimal("0.075"), Decimal("0.60")


@pytest.fixture
def llm_server() -> Iterator[LlmServer]:
    server = LlmServer().start()
    yield server
    server.stop()


def _chain(server: LlmServer, **settings: Any) -> LLMChain:
    return build_chain(
        Settings(
            environment="test",
            llm_provider="openai",
            llm_base_url=server.base_url,
            llm_model="gpt-4o-mini",
            **settings,
        )
    )


async def test_agent_llm_integration(llm_server: LlmServer) -> None:
    chain = _chain(llm_server, llm_timeout_seconds=1.0, llm_retry_base_seconds=0.05)
    chunks: list[str] = []

    async def collect(piece: str) -> None:
        chunks.append(piece)

    # 10 calls, alternating plain and streaming; a few answers carry cached input tokens.
    llm_server.script(*({"cached_tokens": 3} if n % 3 == 0 else {} for n in range(10)))
    responses = []
    for n in range(10):
        request = LLMRequest(system="You phrase findings.", prompt=f"Finding number {n}: costs.")
        streamed = n % 2 == 1
        responses.append(await chain.complete(request, on_chunk=collect if streamed else None))

    log = llm_server.requests()
    assert len(log) == 10
    for n, entry in enumerate(log):
        body = entry["body"]
        assert body["model"] == "gpt-4o-mini"
        assert body["messages"] == [
            {"role": "system", "content": "You phrase findings."},
            {"role": "user", "content": f"Finding number {n}: costs."},
        ]
        assert body["max_tokens"] == 400
        assert bool(body.get("stream")) == (n % 2 == 1)
        if body.get("stream"):
            assert body["stream_options"] == {"include_usage": True}
    # Streaming delivered the same text, piece by piece.
    streamed_text = "".join(chunks)
    assert streamed_text == "".join(r.text for r in responses[1::2])
    assert len(chunks) > 5

    # Usage as the server reported it, category by category; cost from the catalogue.
    for response, entry in zip(responses, log, strict=True):
        usage = entry["usage"]
        cached = usage["prompt_tokens_details"]["cached_tokens"]
        assert response.provider == "openai"
        assert response.tokens.input == usage["prompt_tokens"] - cached
        assert response.tokens.cached_input == cached
        assert response.tokens.output == usage["completion_tokens"]
        expected = (
            (usage["prompt_tokens"] - cached) * MINI_INPUT
            + cached * MINI_CACHED
            + usage["completion_tokens"] * MINI_OUTPUT
        ) / 1_000_000
        assert response.cost_usd == expected
    total = sum((r.cost_usd for r in responses), Decimal(0))
    print(f"\nllm: 10 calls, {sum(r.tokens.total for r in responses)} tokens, ${total} exactly")

    # A call slower than the timeout is abandoned and retried; the retry answers.
    llm_server.reset()
    llm_server.script({"delay": 3})
    started = time.monotonic()
    slow = await chain.complete(LLMRequest(system="s", prompt="slow"))
    elapsed = time.monotonic() - started
    assert (slow.provider, slow.attempts) == ("openai", 2)
    assert len(llm_server.requests()) == 2
    assert 1.0 <= elapsed < 2.5, elapsed

    # A call that never answers in time falls back to the offline provider, and says so.
    llm_server.reset()
    llm_server.script({"delay": 3}, {"delay": 3}, {"delay": 3})
    fallbacks: list[tuple[str, str, str]] = []

    async def on_fallback(source: str, target: str, reason: str) -> None:
        fallbacks.append((source, target, reason))

    answer = await chain.complete(
        LLMRequest(system="s", prompt="- fact one"), on_fallback=on_fallback
    )
    assert answer.provider == "offline"
    assert [(f[0], f[1]) for f in fallbacks] == [("openai", "offline")]
    assert "timed out" in fallbacks[0][2]
    assert len(llm_server.requests()) == 3


@pytest.mark.real_llm
async def test_agent_llm_integration_real_provider() -> None:
    """The same accounting against the provider in APEX_LLM_* (run with --real-llm)."""
    settings = Settings(environment="test")
    if settings.llm_provider == "offline" or settings.llm_api_key is None:
        pytest.skip("set APEX_LLM_PROVIDER, APEX_LLM_API_KEY (and APEX_LLM_MODEL) to run this")
    chain = build_chain(settings)
    response = await chain.complete(LLMRequest(system="Answer in one word.", prompt="Say ok."))
    assert response.provider == settings.llm_provider
    assert response.tokens.input > 0
    assert response.tokens.output > 0
    assert response.text.strip()


# --- the pipeline -------------------------------------------------------------------------
RUNS = "/api/v1/agents/runs"
PERIOD_START = datetime(2026, 10, 1, tzinfo=UTC)
PERIOD = {"period_start": "2026-10-01T00:00:00Z", "period_end": "2026-10-31T00:00:00Z"}
ALL_INTENTS = {"text": json.dumps({"intents": sorted(RECOMMENDERS)})}


def _calls(
    workload: str,
    model: str,
    count: int,
    *,
    provider: str = "openai",
    input_tokens: int,
    output_tokens: int,
    end_user: str | None = "someone",
    prompt: Callable[[int], str] | None = None,
    extra: Callable[[int], dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """`count` calls spread evenly over the 30 days of the period."""
    return [
        {
            "id": f"{workload}-{i}",
            "timestamp": (PERIOD_START + timedelta(days=i % 30, minutes=i // 30)).isoformat(),
            "provider": provider,
            "model": model,
            "workload": workload,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "end_user": end_user,
            "prompt_hash": prompt(i) if prompt else f"{workload}-prompt-{i}",
            **(extra(i) if extra else {}),
        }
        for i in range(count)
    ]


def planted_month() -> list[dict[str, Any]]:
    """A 30-day month with one planted waste per workload. Prices (pricing.json, $/M tokens):
    gpt-4o 2.50/10.00, gpt-4.1 2.00/8.00, gpt-4.1-mini 0.40/1.60,
    claude-sonnet-4-5 3.00 in / 0.30 cached / 3.75 cache write / 15.00 out."""
    research_failed = {i for i in range(300) if i % 10 == 0}  # 30 failed calls
    return [
        # triage: 3,000 x (500 x 2.50 + 20 x 10.00)/1M = $4.35. Short prompts, 20-token
        #   answers: a small model fits. The cheapest non-reasoning one, gpt-4.1-nano:
        #   3,000 x (500 x 0.10 + 20 x 0.40)/1M = $0.174 -> $0.17; saves $4.18.
        *_calls("triage", "gpt-4o", 3000, input_tokens=500, output_tokens=20),
        # support: 600 x (4,500 x 3 + 200 x 15)/1M = $9.90. Its 3,000-token prefix:
        #   1.8M tokens = $5.40 uncached; cached, with one write a day (30 x 3,000 = 90,000)
        #   the rest read: 5.40 - (1.71M x 2.70 - 90,000 x 0.75)/1M = $0.8505 -> $0.85.
        *_calls(
            "support", "claude-sonnet-4-5", 600, provider="anthropic",
            input_tokens=4500, output_tokens=200,
            extra=lambda i: {"prefix_hash": "support-system-v1", "prefix_tokens": 3000},
        ),
        # nightly: every call just after midnight UTC, 12 s each, a tenant id on every call;
        #   150 x (3,000 x 2 + 800 x 8)/1M = $1.86; the batch API halves it.
        *_calls(
            "nightly", "gpt-4.1", 150, input_tokens=3000, output_tokens=800,
            end_user="tenant-7", extra=lambda i: {"latency_ms": 12_000},
        ),
        # faq: 100 questions asked 20 times each: 2,000 x (2,000 x 0.40 + 300 x 1.60)/1M
        #   = $2.56; one answer per question remains: 100 x 0.00128 = $0.128 -> $0.13.
        *_calls(
            "faq", "gpt-4.1-mini", 2000, input_tokens=2000, output_tokens=300,
            prompt=lambda i: f"faq-question-{i % 100}",
        ),
        # research: 300 calls of 20,000 input tokens: $12.00 of input, a quarter trimmed
        #   -> $9.00; 30 of them failed (no output): 30 x 20,000 x 2/1M = $1.20 wasted.
        *_calls(
            "research", "gpt-4.1", 300, input_tokens=20000, output_tokens=500,
            extra=lambda i: {"status": "error", "output_tokens": 0} if i in research_failed else {},
        ),
    ]  # fmt: skip


# (kind, workload): (current, projected, savings) per month, from the comments above.
EXPECTED = {
    ("prompt_caching", "support"): ("5.40", "0.85", "4.55"),
    ("model_right_sizing", "triage"): ("4.35", "0.17", "4.18"),
    ("prompt_trimming", "research"): ("12.00", "9.00", "3.00"),
    ("response_caching", "faq"): ("2.56", "0.13", "2.43"),
    ("error_waste", "research"): ("1.20", "0.00", "1.20"),
    ("batch_api", "nightly"): ("1.86", "0.93", "0.93"),
}
# Savings on one workload overlap, so the total takes research's larger one:
# 4.55 + 4.18 + 3.00 + 2.43 + 0.93 = 15.09. Spend: 4.35 + 9.90 + 1.86 + 2.56 + 13.08.
EXPECTED_TOTAL_SAVINGS, EXPECTED_SPEND = "15.09", "31.75"


@dataclass
class Stack:
    """Real PostgreSQL, Redis, `apex serve`, `apex worker`s and the LLM server double."""

    postgres: PostgresCluster
    database: str
    redis: RedisServer
    server: ApexServer
    client: httpx.Client
    headers: dict[str, str]
    llm: LlmServer
    workers: list[ApexWorker]
    start_worker: Callable[..., ApexWorker]
    settings: dict[str, str]

    def add_worker(self, **extra: str) -> ApexWorker:
        worker = self.start_worker(
            self.postgres.url(self.database), self.redis.url, **{**self.settings, **extra}
        )
        self.workers.append(worker)
        return worker

    def ingest(self, records: list[dict[str, Any]]) -> None:
        for start in range(0, len(records), 1000):
            batch = records[start : start + 1000]
            answer = self.client.post(
                "/api/v1/usage/events", headers=self.headers, json={"records": batch}
            )
            assert answer.status_code == 200, answer.text
            assert answer.json()["accepted"] == len(batch), answer.json()

    def start_run(self, **body: Any) -> httpx.Response:
        payload = {"question": "Where are we wasting money on LLMs?", **PERIOD, **body}
        return self.client.post(RUNS, headers=self.headers, json=payload)

    def run(self, run_id: str) -> dict[str, Any]:
        answer = self.client.get(f"{RUNS}/{run_id}", headers=self.headers)
        assert answer.status_code == 200, answer.text
        result: dict[str, Any] = answer.json()
        return result

    def wait(self, run_id: str, timeout: float = 90) -> dict[str, Any]:
        finished = {"succeeded", "failed", "cancelled"}
        assert wait_until(lambda: self.run(run_id)["status"] in finished, timeout, 0.1), (
            self.run(run_id),
            [w.logs()[-3000:] for w in self.workers],
        )
        return self.run(run_id)

    def events(self, run_id: str) -> list[dict[str, Any]]:
        answer = self.client.get(f"{RUNS}/{run_id}/events", headers=self.headers)
        assert answer.status_code == 200, answer.text
        result: list[dict[str, Any]] = answer.json()
        return result

    def report(self, run_id: str) -> dict[str, Any]:
        answer = self.client.get(f"{RUNS}/{run_id}/report", headers=self.headers)
        assert answer.status_code == 200, answer.text
        result: dict[str, Any] = answer.json()
        return result

    def sql(self, query: str) -> str:
        return self.postgres.sql(query, self.database).strip()


@pytest.fixture
def stack(
    postgres: PostgresCluster,
    database_url: str,
    fresh_redis: RedisServer,
    start_apex: Callable[..., ApexServer],
    start_worker: Callable[..., ApexWorker],
    llm_server: LlmServer,
) -> Iterator[Stack]:
    settings = {
        "llm_provider": "openai",
        "llm_base_url": llm_server.base_url,
        "llm_model": "gpt-4o-mini",
        "llm_timeout_seconds": "10",
        "llm_retry_base_seconds": "0.2",
        "agent_step_timeout_seconds": "8",
        "queue_redelivery_seconds": "10",
    }
    server = start_apex(database_url, fresh_redis.url, **settings)
    client = server.client()
    headers = bearer(signup(client))
    database = database_name(database_url)
    postgres.sql("UPDATE organizations SET tier = 'mid'", database)
    yield Stack(
        postgres, database, fresh_redis, server, client, headers, llm_server, [], start_worker,
        settings,
    )  # fmt: skip
    client.close()


def _types(events: list[dict[str, Any]]) -> list[str]:
    return [event["type"] for event in events]


def test_agent_orchestration_integration(stack: Stack) -> None:
    month = planted_month()
    stack.ingest(month)
    # A client that never saw the answer sends a batch again: every record is a duplicate,
    # nothing is stored twice (the report's totals below are the month's, to the cent).
    again = stack.client.post(
        "/api/v1/usage/events", headers=stack.headers, json={"records": month[:1000]}
    )
    assert (again.json()["accepted"], again.json()["duplicates"]) == (0, 1000)
    assert stack.sql("SELECT count(*) FROM usage_records") == str(len(month))
    stack.add_worker()
    stack.add_worker()
    stack.llm.script(ALL_INTENTS)
    started = stack.start_run()
    assert started.status_code == 202, started.text
    run_id = started.json()["id"]
    assert started.json()["status"] == "queued"
    run = stack.wait(run_id)
    assert run["status"] == "succeeded", (run["error"], run["steps"])

    # The steps ran in order, each once, and are stored with their timings and LLM usage.
    steps = run["steps"]
    assert [s["name"] for s in steps] == list(STEPS)
    assert {s["status"] for s in steps} == {"succeeded"}
    assert [s["attempts"] for s in steps] == [1] * 5
    for before, after in itertools.pairwise(steps):
        assert before["finished_at"] <= after["started_at"]
    assert [s["llm_calls"] for s in steps] == [1, 0, 1, 1, 1]
    stored = stack.sql(
        f"SELECT name, status FROM agent_steps WHERE run_id = '{run_id}' ORDER BY position"  # noqa: S608
    ).splitlines()
    assert stored == [f"{name}|succeeded" for name in STEPS]

    # The LLM server received the four calls (triage classifies; the others phrase);
    # Apex's accounting of them equals what the server reported.
    log = stack.llm.requests()
    assert len(log) == 4
    assert [bool(entry["body"].get("stream")) for entry in log] == [False, False, False, True]
    reported = sum(e["usage"]["prompt_tokens"] + e["usage"]["completion_tokens"] for e in log)
    assert (run["llm_calls"], run["tokens_used"]) == (4, reported)

    # Events, in order: each agent starts and completes in turn; tools report around their
    # work; the final report comes last.
    events = stack.events(run_id)
    kinds = _types(events)
    assert [e["payload"]["agent"] for e in events if e["type"] == "agent_started"] == list(STEPS)
    assert [e["payload"]["agent"] for e in events if e["type"] == "agent_completed"] == list(STEPS)
    assert kinds[0] == "agent_started"
    assert kinds[-1] == "final_report"
    assert kinds.count("final_report") == 1
    assert "agent_error" not in kinds
    assert "agent_fallback" not in kinds
    tools = [e["payload"]["tool"] for e in events if e["type"] == "tool_executing"]
    assert tools == ["spend_query", *sorted(RECOMMENDERS)]
    completed = [e["payload"]["tool"] for e in events if e["type"] == "tool_completed"]
    assert completed == tools
    for position, kind in enumerate(kinds):
        if kind == "tool_executing":
            assert kinds[position + 1] == "tool_completed"
    assert {"agent_thinking", "partial_result", "stream_chunk"} <= set(kinds)
    ids = [event["id"] for event in events]
    assert ids == sorted(ids, key=lambda i: tuple(int(p) for p in i.split("-")))

    # The report finds every planted waste, with the hand-computed figures to the cent.
    report = stack.report(run_id)["report"]
    found = findings(report)
    assert found == EXPECTED
    assert [r["rank"] for r in report["recommendations"]] == list(range(1, 7))
    assert report["recommendations"][0]["kind"] == "prompt_caching"
    assert report["total_monthly_savings_usd"] == EXPECTED_TOTAL_SAVINGS
    assert report["breakdown"]["total_usd"] == EXPECTED_SPEND
    assert report["breakdown"]["calls"] == 6050
    assert report["failed_analyses"] == []
    # Every dollar was analysed; on Mid nothing is withheld.
    covered = report["coverage"]
    assert (covered["spend_usd"], covered["analysed_usd"], covered["excluded"]) == (
        EXPECTED_SPEND,
        EXPECTED_SPEND,
        [],
    )
    assert report["withheld"] is None
    triage = next(r for r in report["recommendations"] if r["workload"] == "triage")
    assert triage["evidence"]["target_model"] == "gpt-4.1-nano"
    assert triage["evidence"]["runner_up"] == {
        "model": "gpt-4o-mini",
        "projected_monthly_usd": "0.26",  # 3,000 x (500 x 0.15 + 20 x 0.60)/1M = $0.261
    }
    assert events[-1]["payload"]["total_monthly_savings_usd"] == EXPECTED_TOTAL_SAVINGS
    markdown = stack.report(run_id)["markdown"]
    assert f"**${EXPECTED_TOTAL_SAVINGS}**" in markdown
    # The question and the report are the run's thread: the user's message, then the answer.
    thread = stack.sql(
        "SELECT seq, role, content = (SELECT report_markdown FROM agent_runs) "  # noqa: S608
        f"FROM messages WHERE thread_id = '{run['thread_id']}' ORDER BY seq"
    ).splitlines()
    assert thread == ["1|user|f", "2|assistant|t"]
    print(
        f"\norchestration: 5 steps, {len(events)} events in order, 6/6 planted wastes found, "
        f"${EXPECTED_TOTAL_SAVINGS}/month to the cent"
    )


def _numbers(report: dict[str, Any]) -> dict[str, Any]:
    """What the analyses computed (the wording around it comes from the LLM)."""
    return {
        "breakdown": report["breakdown"],
        "recommendations": report["recommendations"],
        "total": report["total_monthly_savings_usd"],
    }


def test_agent_failure_recovery_integration(stack: Stack) -> None:
    stack.ingest(planted_month())
    first = stack.add_worker(llm_breaker_threshold="5", llm_breaker_reset_seconds="4")

    # Retries follow the policy: a 429 waits its Retry-After (1 s); a 500 waits the
    # jittered backoff (at most 0.2 s x 2); the third attempt answers.
    stack.llm.script({"status": 429, "retry_after": 1}, {"status": 500}, ALL_INTENTS)
    run_id = stack.start_run().json()["id"]
    assert stack.wait(run_id)["status"] == "succeeded"
    log = stack.llm.requests()
    assert [entry["status"] for entry in log] == [429, 500, 200, 200, 200, 200]
    gaps = [log[1]["t"] - log[0]["t"], log[2]["t"] - log[1]["t"]]
    # Lower bounds hold by causality; upper bounds are loose (a loaded machine adds delay)
    # but still catch a retry that waits a policy too many.
    assert 1.0 <= gaps[0] < 3.0, gaps
    assert gaps[1] < 1.5, gaps
    assert "agent_fallback" not in _types(stack.events(run_id))
    reference = _numbers(stack.report(run_id)["report"])
    assert {(r["kind"], r["workload"]) for r in reference["recommendations"]} == set(EXPECTED)

    # Five failures in a row open the circuit: the triage call fails three times and falls
    # back; the next call fails twice more and the circuit opens; no request reaches the
    # server while it is open. The offline provider answers; the numbers are unchanged.
    stack.llm.reset()
    stack.llm.script(*({"status": 500} for _ in range(5)))
    run_id = stack.start_run().json()["id"]
    assert stack.wait(run_id)["status"] == "succeeded"
    assert [entry["status"] for entry in stack.llm.requests()] == [500] * 5
    fallbacks = [e["payload"] for e in stack.events(run_id) if e["type"] == "agent_fallback"]
    assert [(f["from"], f["to"]) for f in fallbacks] == [("openai", "offline")] * 4
    assert "HTTP 500" in fallbacks[0]["reason"]
    assert [f["reason"] for f in fallbacks[2:]] == ["openai: circuit open"] * 2
    assert "llm_circuit_opened" in first.logs()
    assert _numbers(stack.report(run_id)["report"]) == reference

    # After the reset time one probe goes through; it succeeds and the circuit closes. (The
    # circuit opened before the run ended: waiting the reset time from here always suffices.)
    time.sleep(4 + 0.2)
    stack.llm.reset()
    stack.llm.script(ALL_INTENTS)
    run_id = stack.start_run().json()["id"]
    assert stack.wait(run_id)["status"] == "succeeded"
    assert [entry["status"] for entry in stack.llm.requests()] == [200] * 4
    assert "agent_fallback" not in _types(stack.events(run_id))
    assert "llm_circuit_closed" in first.logs()

    # A worker killed with -9 in the middle of a step: another worker takes the step's job
    # over, runs that step again from the stored outputs before it, and the run completes
    # with the same numbers.
    stack.add_worker()
    stack.llm.reset()
    stack.llm.script(ALL_INTENTS, {"delay": 6})  # optimisation's call hangs
    run_id = stack.start_run().json()["id"]
    assert wait_until(
        lambda: any(
            e["type"] == "agent_started" and e["payload"]["agent"] == "optimisation"
            for e in stack.events(run_id)
        ),
        timeout=60,
    )
    assert wait_until(lambda: len(stack.llm.requests()) == 2, timeout=30)
    step_worker = stack.sql(
        f"SELECT worker FROM agent_steps WHERE run_id = '{run_id}' AND name = 'optimisation'"  # noqa: S608
    )
    victim = next(w for w in stack.workers if step_worker.endswith(f":{w.process.pid}"))  # type: ignore[union-attr]
    victim.kill()
    killed_at = time.monotonic()
    run = stack.wait(run_id, timeout=90)
    assert run["status"] == "succeeded", run
    attempts = {step["name"]: step["attempts"] for step in run["steps"]}
    assert attempts == {"triage": 1, "data": 1, "optimisation": 2, "actions": 1, "reporting": 1}
    resumed_by = stack.sql(
        f"SELECT worker FROM agent_steps WHERE run_id = '{run_id}' AND name = 'optimisation'"  # noqa: S608
    )
    assert resumed_by != step_worker
    assert _numbers(stack.report(run_id)["report"]) == reference
    print(
        f"\nrecovery: retries spaced {gaps[0]:.2f}s (Retry-After 1) and {gaps[1]:.2f}s; circuit "
        f"opened after 5 failures, 0 requests while open, closed on the probe; worker killed "
        f"mid-step, run resumed from step 3 and finished {time.monotonic() - killed_at:.1f}s later"
    )


def _redis_keys(stack: Stack) -> set[str]:
    client = redis.Redis.from_url(stack.redis.url, decode_responses=True)
    try:
        keys: list[str] = client.keys("*")  # type: ignore[assignment]
        return set(keys)
    finally:
        client.close()


def _pending_jobs(stack: Stack) -> int:
    client = redis.Redis.from_url(stack.redis.url, decode_responses=True)
    try:
        return int(client.xpending("apex:jobs", "apex-workers")["pending"])
    finally:
        client.close()


def test_agent_resource_management_integration(stack: Stack) -> None:
    stack.ingest(planted_month())
    stack.sql("UPDATE organizations SET tier = 'early'")  # 2 concurrent runs

    # Five runs at once on a plan that runs two: two are queued, three refused with 429.
    with ThreadPoolExecutor(max_workers=5) as pool:
        answers = list(pool.map(lambda _: stack.start_run(), range(5)))
    statuses = sorted(answer.status_code for answer in answers)
    assert statuses == [202, 202, 429, 429, 429], [a.text for a in answers]
    refused = next(a for a in answers if a.status_code == 429)
    assert refused.json()["error"] == "RateLimited"
    assert (refused.json()["limit"], refused.json()["upgrade"]) == (2, "mid")
    assert int(refused.headers["Retry-After"]) >= 1
    assert stack.sql("SELECT count(*) FROM agent_runs") == "2"  # refused runs left no row
    organization_id = stack.sql("SELECT id FROM organizations")
    slots = f"apex:org:{organization_id}:active_runs"
    assert slots in _redis_keys(stack)

    # A worker runs the two; their slots are released and the next run is accepted.
    stack.llm.script(ALL_INTENTS, *({} for _ in range(3)), ALL_INTENTS)
    worker = stack.add_worker()
    for answer in answers:
        if answer.status_code == 202:
            assert stack.wait(answer.json()["id"])["status"] == "succeeded"
    assert slots not in _redis_keys(stack)
    assert stack.start_run().status_code == 202
    assert wait_until(lambda: slots not in _redis_keys(stack), timeout=60)

    # A token budget that covers triage's call but not the next one: the run stops with
    # agent_error (budget exceeded) and no further request reaches the LLM server.
    stack.llm.reset()
    stack.llm.script(ALL_INTENTS)
    run_id = stack.start_run(token_budget=300).json()["id"]
    run = stack.wait(run_id)
    assert run["status"] == "failed"
    assert run["error"].startswith("optimisation: budget exceeded: token budget")
    assert len(stack.llm.requests()) == 1
    assert 0 < run["tokens_used"] <= 300
    errors = [e["payload"] for e in stack.events(run_id) if e["type"] == "agent_error"]
    assert errors == [{"agent": "optimisation", "error": run["error"][14:], "fatal": True}]

    # Runaway analyses: one exhausts its memory limit, the next its CPU limit. Both are
    # stopped and reported; the run finishes with the rest; the worker serves the next run.
    worker.stop()
    runaway = stack.add_worker(
        failpoints="analysis.runaway_memory:1,analysis.runaway_cpu:1",
        analysis_memory_limit_mb="512",
        analysis_cpu_limit_seconds="3",
        # Seconds of CPU can take many more of wall clock on a busy machine: room for both.
        agent_step_timeout_seconds="30",
        queue_redelivery_seconds="60",
    )
    pid = runaway.process.pid  # type: ignore[union-attr]
    stack.llm.reset()
    stack.llm.script(ALL_INTENTS, {}, {}, {}, ALL_INTENTS)
    run_id = stack.start_run().json()["id"]
    run = stack.wait(run_id)
    assert run["status"] == "succeeded", (run["error"], run["steps"], runaway.logs()[-4000:])
    failed = stack.report(run_id)["report"]["failed_analyses"]
    assert [f["analysis"] for f in failed] == ["batch_api", "error_waste"]
    assert "memory limit (512 MB)" in failed[0]["error"]
    assert "CPU limit (3 s) and was killed" in failed[1]["error"]
    reported = [e["payload"]["tool"] for e in stack.events(run_id) if e["type"] == "agent_error"]
    assert reported == ["batch_api", "error_waste"]
    assert runaway.running
    assert runaway.process.pid == pid  # type: ignore[union-attr]
    next_run = stack.start_run().json()["id"]
    assert stack.wait(next_run)["status"] == "succeeded"
    assert stack.report(next_run)["report"]["failed_analyses"] == []

    # Cancellation stops the step in flight (its LLM request included) and leaves no job,
    # no busy database connection and no Redis key behind but the run's event log.
    stack.llm.reset()
    stack.llm.script({"delay": 20})
    before = _redis_keys(stack)
    run_id = stack.start_run().json()["id"]
    assert wait_until(lambda: len(stack.llm.requests()) == 1, timeout=30)
    cancelled = stack.client.post(f"{RUNS}/{run_id}/cancel", headers=stack.headers)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    assert wait_until(lambda: "agent_step_cancelled" in runaway.logs(), timeout=30)
    assert wait_until(
        lambda: (
            [(s["name"], s["status"], s["error"]) for s in stack.run(run_id)["steps"]]
            == [("triage", "failed", "cancelled")]
        ),
        timeout=10,
    ), stack.run(run_id)
    assert wait_until(lambda: _pending_jobs(stack) == 0, timeout=30)
    busy = stack.postgres.sql(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid() AND state IN ('active', 'idle in transaction')",
        stack.database,
    )
    assert busy.strip() == "0"
    # What stays is the run's event stream and its thread's channel (both expire).
    thread = f"apex:ch:thread:{stack.run(run_id)['thread_id']}"
    assert _redis_keys(stack) - before == {
        f"apex:run:{run_id}:events",
        f"{thread}:log",
        f"{thread}:seq",
        f"{thread}:epoch",
    }
    assert slots not in _redis_keys(stack)
    again = stack.client.post(f"{RUNS}/{run_id}/cancel", headers=stack.headers)
    assert again.status_code == 409
    time.sleep(1)
    assert len(stack.llm.requests()) == 1  # nothing after the cancelled call

    # A step that outlives its wall-clock limit fails the run, and frees its slot.
    runaway.stop()
    limited = stack.add_worker(agent_step_timeout_seconds="2")
    stack.llm.reset()
    stack.llm.script({"delay": 20})
    started = time.monotonic()
    run_id = stack.start_run().json()["id"]
    run = stack.wait(run_id)
    assert (run["status"], run["error"]) == ("failed", "triage: step timed out after 2 s")
    assert time.monotonic() - started < 10  # long before the LLM call would have answered
    assert wait_until(lambda: slots not in _redis_keys(stack), timeout=30)

    # So does a run that outlives its own limit, counted across steps: triage answers at
    # once, and a later step's slow LLM call takes the run past its 10 s.
    limited.stop()
    stack.add_worker(
        agent_run_timeout_seconds="10",
        agent_step_timeout_seconds="30",
        queue_redelivery_seconds="60",
    )
    stack.llm.reset()
    stack.llm.script(ALL_INTENTS, {"delay": 30})
    started = time.monotonic()
    run_id = stack.start_run().json()["id"]
    run = stack.wait(run_id)
    assert run["status"] == "failed"
    assert run["error"].endswith(": run timed out after 10 s"), run["error"]
    steps = {s["name"]: s["status"] for s in run["steps"]}
    assert (steps["triage"], steps["data"]) == ("succeeded", "succeeded")
    assert steps[run["error"].split(":")[0]] == "failed"
    assert time.monotonic() - started < 25  # long before the slow call would have answered
    assert len(stack.llm.requests()) == 2
    assert wait_until(lambda: slots not in _redis_keys(stack), timeout=30)
    print(
        "\nresources: 5 at once on a 2-run plan -> 2 queued, 3 x 429; budget stop after 1 "
        "LLM call; memory and CPU runaways killed, worker alive; cancel left 0 jobs, "
        "0 busy connections, 0 stray keys; a step over its time limit failed the run, and so "
        f"did a run over its own limit ({run['error']})"
    )
