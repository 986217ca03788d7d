"""Tier 4 — agents: the LLM layer against a real OpenAI-compatible server over HTTP, and the
multi-agent pipeline in real `apex worker` processes over PostgreSQL and Redis."""

from __future__ import annotations

import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from apex.agents.llm import build_chain
from apex.agents.llm.base import LLMRequest
from apex.agents.llm.resilience import LLMChain
from apex.settings import Settings
from tests.harness.llm import LlmServer

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
