"""Circuit breaker states on an injected clock, and the retry wait policy."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from tenacity import RetryCallState

from apex.agents.budget import Budget
from apex.agents.llm.base import (
    BudgetExceeded,
    LLMRejected,
    LLMRequest,
    LLMResponse,
    LLMUnavailable,
)
from apex.agents.llm.resilience import CircuitBreaker, LLMChain, RetryPolicy
from apex.kit.clock import FrozenClock
from apex.usage.pricing import Tokens, default_catalogue

pytestmark = pytest.mark.unit


def test_breaker_opens_after_the_threshold_and_probes_once_after_the_reset() -> None:
    clock = FrozenClock()
    breaker = CircuitBreaker(threshold=3, reset_seconds=30, clock=clock)
    for _ in range(2):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.state == "closed"
    breaker.record_failure()
    assert (breaker.state, breaker.allow()) == ("open", False)
    clock.advance(29.9)
    assert not breaker.allow()
    clock.advance(0.1)
    assert breaker.state == "half_open"
    assert breaker.allow()  # the one probe
    assert not breaker.allow()  # nobody else while it is out
    breaker.record_failure()  # a failed probe opens it again at once
    assert breaker.state == "open"
    clock.advance(30)
    assert breaker.allow()
    breaker.record_success()
    assert (breaker.state, breaker.failures) == ("closed", 0)


def _state(attempt: int, error: Exception) -> RetryCallState:
    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.attempt_number = attempt
    state.set_exception((type(error), error, None))
    return state


def test_retry_waits_honour_retry_after_and_cap_the_backoff() -> None:
    policy = RetryPolicy(attempts=5, base_seconds=0.5, max_seconds=4)
    limited = LLMUnavailable("429", provider="p", retry_after=2.5)
    assert policy.wait(_state(1, limited)) == 2.5
    assert policy.wait(_state(1, LLMUnavailable("429", provider="p", retry_after=60))) == 4
    for attempt, ceiling in ((1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (6, 4.0)):
        waits = [
            policy.wait(_state(attempt, LLMUnavailable("500", provider="p"))) for _ in range(50)
        ]
        assert all(0 <= wait <= ceiling for wait in waits)
        assert max(waits) > ceiling / 4  # jittered over the range, not stuck at 0


def test_budget_reserves_before_and_settles_to_actual_usage() -> None:
    price = default_catalogue().find("openai", "gpt-4o-mini")
    budget = Budget(tokens=1000, cost_nanos=10**9)
    request = LLMRequest(system="s" * 30, prompt="p" * 30, max_tokens=100)
    reserved = budget.reserve(request, price)
    assert reserved[0] == request.estimated_tokens() == 20 + 16 + 100
    assert budget.used_tokens == reserved[0]
    answer = LLMResponse("ok", "openai", "gpt-4o-mini", Tokens(input=20, output=5))
    budget.settle(reserved, answer)
    assert (budget.used_tokens, budget.calls) == (25, 1)
    with pytest.raises(BudgetExceeded, match="token budget exceeded"):
        budget.reserve(LLMRequest(system="", prompt="", max_tokens=990), price)
    assert budget.used_tokens == 25  # a refused reservation takes nothing


class _Scripted:
    """A provider that answers from a script: a response, an error to raise, or "hang"."""

    name = "scripted"
    model = "m"

    def __init__(self, *outcomes: object) -> None:
        self.outcomes = list(outcomes)
        self.calls = 0

    async def complete(self, request: LLMRequest) -> LLMResponse:
        self.calls += 1
        outcome = self.outcomes.pop(0)
        if outcome == "hang":
            await asyncio.Event().wait()
        if isinstance(outcome, BaseException):
            raise outcome
        return LLMResponse("ok", self.name, "m", Tokens(input=1, output=1))

    async def stream(self, request: LLMRequest, on_chunk: Any) -> LLMResponse:
        return await self.complete(request)


@pytest.mark.parametrize("probe_ends", ["rejected", "cancelled"])
def test_a_probe_that_ends_without_an_answer_lets_the_next_call_probe(probe_ends: str) -> None:
    """A probe the provider refuses (HTTP 4xx) or that is cancelled (the step's timeout)
    says nothing about the provider being up: the next call probes, and its answer closes
    the circuit. Before, such a probe left the circuit refusing every call for good."""
    clock = FrozenClock()
    probe = LLMRejected("HTTP 400", provider="scripted") if probe_ends == "rejected" else "hang"
    provider = _Scripted(LLMUnavailable("HTTP 500", provider="scripted"), probe, "answer")
    chain = LLMChain([provider], policy=RetryPolicy(attempts=1), breaker_threshold=1,
                     breaker_reset_seconds=30, clock=clock)  # fmt: skip
    request = LLMRequest(system="s", prompt="p")

    async def scenario() -> None:
        with pytest.raises(LLMUnavailable):
            await chain.complete(request)  # the failure opens the circuit
        clock.advance(30)
        if probe_ends == "rejected":
            with pytest.raises(LLMUnavailable):
                await chain.complete(request)
        else:
            hung = asyncio.create_task(chain.complete(request))
            await asyncio.sleep(0.01)
            hung.cancel()
            with pytest.raises(asyncio.CancelledError):
                await hung
        assert provider.calls == 2
        answer = await chain.complete(request)  # probes again instead of "circuit open"
        assert (answer.text, provider.calls) == ("ok", 3)
        assert chain.breakers["scripted"].state == "closed"

    asyncio.run(scenario())
