"""Acceptance: a realistic month nobody tuned the analyses to, through the product as a
customer uses it — `apex ingest` into a real `apex serve` on PostgreSQL and Redis, a run of
the agent pipeline on a real `apex worker`, the report over the API.

The month has its own seeded generator (not the demo's): user or tenant ids on every call,
dated, vendor-prefixed and cloud spellings of model names, retries, bursts, mixed
providers, cached and uncached calls. Six workloads each hide one kind of waste the way
real logs hide it; five look-alikes must yield nothing; one model the catalogue does not
know reports its cost, another does not. Every expected dollar is computed here, from the
generated records and the list prices written out below — never read back from Apex.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness import ApexServer, ApexWorker, PostgresCluster, RedisServer
from tests.harness.procs import wait_until
from tests.integration.critical.conftest import bearer, database_name, findings, signup

START = datetime(2026, 9, 1, tzinfo=UTC)
END = START + timedelta(days=30)
M = Decimal(1_000_000)
CENT = Decimal("0.01")


@dataclass(frozen=True)
class Price:
    """List prices, USD per million tokens, written out from the providers' pages."""

    input: Decimal
    cached: Decimal
    write: Decimal
    output: Decimal


def _p(i: str, c: str, w: str, o: str) -> Price:
    return Price(Decimal(i), Decimal(c), Decimal(w), Decimal(o))


PRICES = {
    "gpt-4o": _p("2.50", "1.25", "2.50", "10.00"),
    "gpt-4.1-nano": _p("0.10", "0.025", "0.10", "0.40"),
    "gpt-4.1": _p("2.00", "0.50", "2.00", "8.00"),
    "gpt-4.1-mini": _p("0.40", "0.10", "0.40", "1.60"),
    "o3": _p("2.00", "0.50", "2.00", "8.00"),
    "claude-sonnet-4-5": _p("3.00", "0.30", "3.75", "15.00"),
    "claude-3-5-sonnet": _p("3.00", "0.30", "3.75", "15.00"),
    "claude-haiku-4-5": _p("1.00", "0.10", "1.25", "5.00"),
    "gemini-2.5-pro": _p("1.25", "0.125", "1.25", "10.00"),
    "mistral-small": _p("0.10", "0.10", "0.10", "0.30"),
}
# The model nobody prices whose gateway reports cost: $0.80 in, $2.40 out per million.
LABS = _p("0.80", "0.80", "0.80", "2.40")


def cents(amount: Decimal) -> Decimal:
    return amount.quantize(CENT, rounding=ROUND_HALF_UP)


@dataclass
class Call:
    record: dict[str, Any]
    price: Price | None  # None: a model nobody prices (stored unpriced unless cost is reported)

    @property
    def cost(self) -> Decimal:
        """What Apex stores: the reported cost, else list price; whole nano-dollars."""
        r = self.record
        if "cost_usd" in r:
            exact = Decimal(r["cost_usd"])
        elif self.price is None:
            return Decimal(0)
        else:
            exact = self.at(self.price)
        return exact.quantize(Decimal("0.000000001"), rounding=ROUND_HALF_EVEN)

    def at(self, price: Price) -> Decimal:
        r = self.record
        total: Decimal = (
            r.get("input_tokens", 0) * price.input
            + r.get("cached_input_tokens", 0) * price.cached
            + r.get("cache_write_tokens", 0) * price.write
            + (r.get("output_tokens", 0) + r.get("reasoning_tokens", 0)) * price.output
        ) / M
        return total

    @property
    def ok(self) -> bool:
        return bool(self.record.get("status", "ok") == "ok")


@dataclass
class Month:
    """The generated records, by workload."""

    rng: random.Random
    calls: dict[str, list[Call]] = field(default_factory=lambda: defaultdict(list))

    def at(self, hours: tuple[int, int] = (0, 24)) -> datetime:
        first, last = hours
        day = self.rng.randrange(30)
        offset = self.rng.uniform(first * 3600, last * 3600 - 1)
        return START + timedelta(days=day, seconds=offset)

    def add(self, workload: str, price: Price | None, **record: Any) -> Call:
        n = len(self.calls[workload])
        record = {"id": f"{workload}:{n:06d}", "workload": workload, **record}
        record["timestamp"] = record["timestamp"].isoformat()
        call = Call(record, price)
        self.calls[workload].append(call)
        return call

    def retry(self, workload: str, failed: Call, **changes: Any) -> Call:
        """The same request again, a little later: same prompt, new id."""
        again = {k: v for k, v in failed.record.items() if k not in {"id", "workload"}}
        again.update(changes)
        again["timestamp"] = datetime.fromisoformat(failed.record["timestamp"]) + timedelta(
            seconds=self.rng.uniform(1, 20)
        )
        return self.add(workload, failed.price, **again)

    def records(self) -> Iterator[dict[str, Any]]:
        everything = [c.record for calls in self.calls.values() for c in calls]
        self.rng.shuffle(everything)  # a gateway's log interleaves workloads
        yield from everything


def generate(seed: int = 20261125) -> Month:
    month = Month(random.Random(seed))
    rng = month.rng

    def user() -> str:
        return f"u-{rng.randint(1, 2500)}"

    # 1. A 1-5 token intent classifier on gpt-4o, logged under three spellings.
    spellings = [("openai", "gpt-4o-2024-08-06"), ("azure", "gpt-4o"), ("openai", "gpt-4o")]
    for n in range(4000):
        provider, model = spellings[n % 3]
        month.add("intent-router", PRICES["gpt-4o"], timestamp=month.at(), provider=provider,
                  model=model, input_tokens=rng.randint(300, 1200),
                  output_tokens=rng.randint(1, 5), latency_ms=rng.randint(250, 900),
                  end_user=user(), prompt_hash=f"ir-{n}")  # fmt: skip

    # 2. A knowledge-base assistant on Claude via Bedrock: two versions of a long system
    #    prompt, never cached, except by the newest client (a fifth of the calls).
    for n in range(2500):
        at = month.at((6, 22))
        version, prefix = ("v1", 2500) if at < START + timedelta(days=15) else ("v2", 2800)
        prompt = rng.randint(3500, 6000)
        cached = rng.random() < 0.2
        month.add("kb-assistant", PRICES["claude-sonnet-4-5"], timestamp=at,
                  provider="bedrock", model="us.anthropic.claude-sonnet-4-5-20250929-v1:0",
                  input_tokens=prompt - (prefix if cached else 0),
                  cached_input_tokens=prefix if cached else 0,
                  output_tokens=rng.randint(200, 600), latency_ms=rng.randint(2000, 6000),
                  end_user=user(), prompt_hash=f"kb-{n}", prefix_hash=f"kb-system-{version}",
                  prefix_tokens=prefix)  # fmt: skip

    # 3. Report generation every night, 01:00-05:00 UTC, 8-30 s a call, a tenant id on each.
    for n in range(1200):
        month.add("report-writer", PRICES["gpt-4.1"], timestamp=month.at((1, 5)),
                  provider="openai", model="gpt-4.1-2025-04-14",
                  input_tokens=rng.randint(4000, 9000), output_tokens=rng.randint(700, 1500),
                  latency_ms=rng.randint(8000, 30000), end_user=f"tenant-{rng.randint(1, 80)}",
                  prompt_hash=f"rw-{n}")  # fmt: skip

    # 4. A help-centre bot: 30 questions make up 40% of the traffic, in bursts; some calls
    #    time out and are retried with the same prompt.
    for n in range(3000):
        popular = rng.random() < 0.4
        question = rng.randint(1, 30)
        key = f"faq-{question}" if popular else f"faq-unique-{n}"
        tokens = {"input_tokens": 900 + (question * 13 if popular else rng.randint(0, 600)),
                  "output_tokens": rng.randint(80, 250)}  # fmt: skip
        call = month.add("support-faq", PRICES["gpt-4.1-mini"], timestamp=month.at((7, 23)),
                         provider="openai", model="gpt-4.1-mini", latency_ms=rng.randint(700, 2500),
                         end_user=user(), prompt_hash=key, **tokens)  # fmt: skip
        if rng.random() < 0.004:
            call.record.update(status="timeout", output_tokens=0, latency_ms=30000)
            month.retry("support-faq", call, status="ok", output_tokens=rng.randint(80, 250),
                        latency_ms=rng.randint(700, 2500))  # fmt: skip

    # 5. Contract review on a dated Claude 3.5 name; the gateway reports each call's cost
    #    (rounded to the micro-dollar, as gateways do).
    for n in range(800):
        tokens = {"input_tokens": rng.randint(15000, 30000), "output_tokens": rng.randint(200, 600)}
        exact = Call(tokens, PRICES["claude-3-5-sonnet"]).at(PRICES["claude-3-5-sonnet"])
        month.add("contract-review", PRICES["claude-3-5-sonnet"], timestamp=month.at((8, 20)),
                  provider="anthropic", model="claude-3-5-sonnet-20241022",
                  cost_usd=str(exact.quantize(Decimal("0.000001"))),
                  latency_ms=rng.randint(4000, 12000), end_user=user(), prompt_hash=f"cr-{n}",
                  **tokens)  # fmt: skip

    # 6. An agent loop on Gemini via Vertex: 8% of calls fail after sending their context,
    #    and are retried.
    for n in range(1500):
        call = month.add("agent-loop", PRICES["gemini-2.5-pro"], timestamp=month.at(),
                         provider="vertex_ai", model="gemini-2.5-pro",
                         input_tokens=rng.randint(10000, 20000),
                         output_tokens=rng.randint(1000, 2000),
                         reasoning_tokens=rng.randint(200, 800),
                         latency_ms=rng.randint(5000, 15000), end_user=user(),
                         prompt_hash=f"al-{n}")  # fmt: skip
        if rng.random() < 0.08:
            call.record.update(status=rng.choice(["error", "timeout"]), output_tokens=0,
                               reasoning_tokens=0)  # fmt: skip
            month.retry("agent-loop", call, status="ok", output_tokens=rng.randint(1000, 2000))

    # Look-alikes, nothing to find:
    # 7. A chat on a small model with its system prompt cached, used around the clock.
    for n in range(2500):
        prompt = rng.randint(1500, 3000)
        written = n % 50 == 0
        month.add("chat-assistant", PRICES["claude-haiku-4-5"], timestamp=month.at(),
                  provider="anthropic", model="claude-haiku-4-5-20251001",
                  input_tokens=prompt - 1200, cached_input_tokens=0 if written else 1200,
                  cache_write_tokens=1200 if written else 0, output_tokens=rng.randint(100, 800),
                  latency_ms=rng.randint(1000, 4000), end_user=user(), prompt_hash=f"ca-{n}",
                  prefix_hash="ca-system", prefix_tokens=1200)  # fmt: skip
    # 8. Office hours in one time zone (09-17 UTC), answered in 1-3 s.
    for n in range(1500):
        month.add("office-bot", PRICES["gpt-4.1-mini"], timestamp=month.at((9, 17)),
                  provider="openai", model="gpt-4.1-mini", input_tokens=rng.randint(800, 2500),
                  output_tokens=rng.randint(100, 400), latency_ms=rng.randint(1000, 3000),
                  end_user=user(), prompt_hash=f"ob-{n}")  # fmt: skip
    # 9. A slow reasoning model people wait on, around the clock.
    for n in range(600):
        month.add("deep-thinker", PRICES["o3"], timestamp=month.at(), provider="openai",
                  model="o3-2025-04-16", input_tokens=rng.randint(1000, 3000),
                  output_tokens=rng.randint(200, 600), reasoning_tokens=rng.randint(1000, 4000),
                  latency_ms=rng.randint(15000, 40000), end_user=user(),
                  prompt_hash=f"dt-{n}")  # fmt: skip
    # 10. A night-shift help desk (22:00-04:00 UTC) on a small model, answered in a second.
    for n in range(1200):
        month.add("night-desk", PRICES["mistral-small"], timestamp=month.at((22, 24))
                  if n % 3 == 0 else month.at((0, 4)), provider="mistralai",
                  model="mistral-small-latest", input_tokens=rng.randint(500, 1500),
                  output_tokens=rng.randint(50, 300), latency_ms=rng.randint(600, 2000),
                  end_user=user(), prompt_hash=f"nd-{n}")  # fmt: skip
    # 11. A summariser: long documents, long summaries.
    for n in range(500):
        month.add("summarizer", PRICES["gpt-4.1"], timestamp=month.at(), provider="openai",
                  model="gpt-4.1", input_tokens=rng.randint(12000, 20000),
                  output_tokens=rng.randint(1500, 2500), latency_ms=rng.randint(10000, 20000),
                  end_user=user(), prompt_hash=f"su-{n}")  # fmt: skip

    # 12. A model nobody prices, whose gateway reports cost; 5% of its calls fail.
    for n in range(600):
        record: dict[str, Any] = {
            "input_tokens": rng.randint(500, 4000),
            "output_tokens": rng.randint(50, 500),
        }
        if n % 20 == 0:
            record |= {"status": "error", "output_tokens": 0}
        cost = Call(record, LABS).at(LABS)
        month.add("labs-experiment", None, timestamp=month.at(), provider="acme",
                  model="acme-70b-instruct", cost_usd=str(cost), latency_ms=rng.randint(500, 3000),
                  end_user=user(), prompt_hash=f"le-{n}", **record)  # fmt: skip
    # 13. A model nobody prices, without cost.
    for n in range(300):
        month.add("shadow-tool", None, timestamp=month.at(), provider="acme", model="mystery-9b",
                  input_tokens=rng.randint(500, 2000), output_tokens=rng.randint(20, 200),
                  latency_ms=rng.randint(300, 900), end_user=user(),
                  prompt_hash=f"st-{n}")  # fmt: skip
    # 14. A pilot with too few calls to judge.
    for n in range(6):
        month.add("pilot", PRICES["gpt-4o"], timestamp=month.at(), provider="openai",
                  model="gpt-4o", input_tokens=50_000, output_tokens=500, latency_ms=9000,
                  end_user=user(), prompt_hash=f"pi-{n}")  # fmt: skip
    return month


# --- what an analyst would compute by hand --------------------------------------------------
Figures = tuple[str, str, str]


def figures(current: Decimal, projected: Decimal) -> Figures:
    now, after = cents(current), cents(projected)
    return str(now), str(after), str(now - after)


def expected_findings(month: Month) -> dict[tuple[str, str], Figures]:
    c = month.calls
    found: dict[tuple[str, str], Figures] = {}
    # Right-sizing: the same tokens at gpt-4.1-nano (small fits: <=2,000-token prompts and
    # <=50-token answers; the cheapest current, non-reasoning OpenAI model below gpt-4o).
    router = c["intent-router"]
    found[("model_right_sizing", "intent-router")] = figures(
        sum((x.cost for x in router), Decimal(0)),
        sum((x.at(PRICES["gpt-4.1-nano"]) for x in router), Decimal(0)),
    )
    # Prompt caching: per uncached prefix, one write a day at the cache-write price and every
    # other call's prefix read from the cache.
    sonnet = PRICES["claude-sonnet-4-5"]
    current = savings = Decimal(0)
    by_prefix: dict[str, list[Call]] = defaultdict(list)
    for x in c["kb-assistant"]:
        if not x.record["cached_input_tokens"]:
            by_prefix[x.record["prefix_hash"]].append(x)
    for calls in by_prefix.values():
        tokens = sum(x.record["prefix_tokens"] for x in calls)
        days = len({x.record["timestamp"][:10] for x in calls})
        written = Decimal(tokens) * days / len(calls)
        current += tokens * sonnet.input / M
        savings += ((tokens - written) * (sonnet.input - sonnet.cached)
                    - written * (sonnet.write - sonnet.input)) / M  # fmt: skip
    found[("prompt_caching", "kb-assistant")] = figures(current, current - savings)
    # Batch: the successful calls at half price.
    nightly = sum((x.cost for x in c["report-writer"] if x.ok), Decimal(0))
    found[("batch_api", "report-writer")] = figures(nightly, nightly / 2)
    # Response caching: per prompt asked more than once (successful calls), one call remains.
    answers: dict[str, list[Decimal]] = defaultdict(list)
    for x in c["support-faq"]:
        if x.ok:
            answers[x.record["prompt_hash"]].append(x.cost)
    repeated = [costs for costs in answers.values() if len(costs) > 1]
    found[("response_caching", "support-faq")] = figures(
        sum((sum(costs, Decimal(0)) for costs in repeated), Decimal(0)),
        sum((sum(costs, Decimal(0)) / len(costs) for costs in repeated), Decimal(0)),
    )
    # Trimming: a quarter of the uncached input, at the list input price.
    contract_input = sum(x.record["input_tokens"] for x in c["contract-review"])
    trim = contract_input * PRICES["claude-3-5-sonnet"].input / M
    found[("prompt_trimming", "contract-review")] = figures(trim, trim * Decimal("0.75"))
    # Error waste: everything the failed calls cost.
    for workload in ("agent-loop", "labs-experiment"):
        failed = sum((x.cost for x in c[workload] if not x.ok), Decimal(0))
        found[("error_waste", workload)] = figures(failed, Decimal(0))
    return found


def expected_total(found: dict[tuple[str, str], Figures]) -> str:
    """Savings on one workload overlap: per workload, the largest counts."""
    best: dict[str, Decimal] = {}
    for (_, workload), (_, _, saves) in found.items():
        best[workload] = max(best.get(workload, Decimal(0)), Decimal(saves))
    return str(sum(best.values(), Decimal("0.00")))


# --- the tour --------------------------------------------------------------------------------
@dataclass
class Customer:
    client: httpx.Client
    headers: dict[str, str]
    postgres: PostgresCluster
    database: str

    def run(self) -> dict[str, Any]:
        period = {"period_start": START.isoformat(), "period_end": END.isoformat()}
        started = self.client.post(
            "/api/v1/agents/runs",
            headers=self.headers,
            json={"question": "Where are we wasting money on LLMs?", **period},
        )
        assert started.status_code == 202, started.text
        run_id = started.json()["id"]

        def finished() -> bool:
            run = self.client.get(f"/api/v1/agents/runs/{run_id}", headers=self.headers).json()
            return run["status"] in {"succeeded", "failed", "cancelled"}

        assert wait_until(finished, timeout=180, interval=0.2)
        answer = self.client.get(f"/api/v1/agents/runs/{run_id}/report", headers=self.headers)
        assert answer.status_code == 200, answer.text
        result: dict[str, Any] = answer.json()
        return result

    def set_tier(self, tier: str) -> None:
        self.postgres.sql(f"UPDATE organizations SET tier = '{tier}'", self.database)  # noqa: S608


def apex_cli(database_url: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("APEX_")}
    env |= {"APEX_DATABASE_URL": database_url, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "apex", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.fixture
def customer(
    postgres: PostgresCluster,
    database_url: str,
    fresh_redis: RedisServer,
    start_apex: Callable[..., ApexServer],
    start_worker: Callable[..., ApexWorker],
) -> Iterator[Customer]:
    server = start_apex(database_url, fresh_redis.url)
    start_worker(database_url, fresh_redis.url)
    with server.client() as client:
        yield Customer(client, bearer(signup(client)), postgres, database_name(database_url))


def test_findings_hold_on_a_month_nobody_tuned_them_to(
    customer: Customer, database_url: str, tmp_path: Path
) -> None:
    month = generate()
    path = tmp_path / "gateway-export.jsonl"
    with path.open("w") as handle:
        for record in month.records():
            handle.write(json.dumps(record) + "\n")
    total_records = sum(len(calls) for calls in month.calls.values())
    slug = customer.postgres.sql("SELECT slug FROM organizations", customer.database).strip()

    started = time.monotonic()
    ingested = apex_cli(database_url, "ingest", str(path), "--org", slug, cwd=tmp_path)
    ingest_seconds = time.monotonic() - started
    assert ingested.returncode == 0, ingested.stdout + ingested.stderr
    said = " ".join(ingested.stderr.split())
    assert f"{total_records:,} accepted, 0 duplicates" in said
    assert "300 stored with a warning" in said  # mystery-9b: stored unpriced, and told so

    expected = expected_findings(month)
    total = expected_total(expected)
    spend = sum((x.cost for calls in month.calls.values() for x in calls), Decimal(0))
    pilot = sum((x.cost for x in month.calls["pilot"]), Decimal(0))

    # On Free: the total and the top finding in full; the rest counted and valued.
    free = customer.run()["report"]
    top = max(expected.items(), key=lambda item: Decimal(item[1][2]))
    assert [(r["kind"], r["workload"]) for r in free["recommendations"]] == [top[0]]
    assert free["total_monthly_savings_usd"] == total
    withheld = free["withheld"]
    assert withheld["findings"] == len(expected) - 1
    assert (withheld["upgrade"], withheld["checkout"]) == ("early", "/api/v1/billing/checkout")
    assert Decimal(withheld["monthly_savings_usd"]) == Decimal(total) - Decimal(top[1][2])

    # On Mid: every planted finding, to the cent; nothing on the look-alikes.
    customer.set_tier("mid")
    full = customer.run()
    report = full["report"]
    found = findings(report)
    assert found == expected
    assert report["total_monthly_savings_usd"] == total
    assert report["withheld"] is None
    by_key = {(r["kind"], r["workload"]): r for r in report["recommendations"]}
    assert by_key[("model_right_sizing", "intent-router")]["evidence"]["target_model"] == (
        "gpt-4.1-nano"
    )
    assert by_key[("batch_api", "report-writer")]["evidence"]["share_in_window"] == "100.0"
    labs = by_key[("error_waste", "labs-experiment")]
    assert labs["confidence"] == "medium"  # priced from its own reported costs
    assert "derived from 600 records' reported cost" in labs["evidence"]["price_basis"]

    # Coverage: what was not analysed, and why, in the JSON and the Markdown alike.
    covered = report["coverage"]
    assert covered["spend_usd"] == str(cents(spend))
    assert covered["excluded_usd"] == str(cents(pilot))
    unpriced, too_few = covered["excluded"]
    assert (unpriced["reason"], unpriced["model"], unpriced["calls"]) == (
        "unpriced",
        "mystery-9b",
        300,
    )
    assert (too_few["reason"], too_few["workloads"], too_few["cost_usd"]) == (
        "too_few_calls",
        ["pilot"],
        str(cents(pilot)),
    )
    assert [e["model"] for e in covered["estimated_prices"]] == ["acme-70b-instruct"]
    markdown = full["markdown"]
    assert "## Coverage" in markdown
    assert f"left out ${cents(pilot)}" in markdown
    assert "**unpriced** (mystery-9b, cost unknown)" in markdown

    # The fix the report names works: price the model (LiteLLM's format), run again.
    litellm = tmp_path / "prices.json"
    litellm.write_text(
        json.dumps(
            {
                "mystery-9b": {
                    "input_cost_per_token": 2e-07,
                    "output_cost_per_token": 6e-07,
                    "litellm_provider": "acme",
                    "mode": "chat",
                }
            }
        )
    )
    imported = apex_cli(
        database_url, "pricing", "import", str(litellm), "--org", slug, cwd=tmp_path
    )
    assert imported.returncode == 0, imported.stderr
    assert "set 1 prices" in imported.stderr
    shadow = sum(
        (x.at(_p("0.20", "0.20", "0.20", "0.60")) for x in month.calls["shadow-tool"]), Decimal(0)
    )
    again = customer.run()["report"]["coverage"]
    assert [e["reason"] for e in again["excluded"]] == ["too_few_calls"]
    assert Decimal(again["spend_usd"]) == cents(spend + shadow)
    print(
        f"\nacceptance: {total_records:,} records ingested by apex ingest in "
        f"{ingest_seconds:.1f}s; {len(expected)}/{len(expected)} planted findings to the cent "
        f"(${total}/month), 0 on 5 look-alikes; excluded ${cents(pilot)} (too few calls) and "
        "300 unpriced calls, analysed once priced"
    )
