"""Retries, circuit breakers and the fallback chain around the providers.

- Retries (tenacity): only `LLMUnavailable`; the wait is the provider's `Retry-After` when
  it sends one (429), otherwise exponential backoff with full jitter, capped.
- One circuit breaker per provider: after `threshold` consecutive failed requests it opens
  and no request is sent for `reset_seconds`; then one probe is let through (half-open): a
  success closes it, a failure opens it again.
- The chain tries each provider in turn (primary → secondary → offline); moving on is a
  fallback, reported through `on_fallback` (the pipeline emits `agent_fallback`).
- Every response is costed from the pricing catalogue (Apex's own LLM spend).
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal

import structlog
from opentelemetry.trace import SpanKind
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from apex.agents.llm.base import (
    ChunkHandler,
    CircuitOpen,
    LLMError,
    LLMProvider,
    LLMRequest,
    LLMResponse,
    LLMUnavailable,
)
from apex.kit.clock import Clock, SystemClock
from apex.observability import tracing
from apex.observability.metrics import Metrics
from apex.usage.pricing import Catalogue, cost_of, default_catalogue

log = structlog.get_logger(__name__)

FallbackHandler = Callable[[str, str, str], Awaitable[None]]  # (from, to, reason)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 3
    base_seconds: float = 0.5
    max_seconds: float = 20.0

    def wait(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome is not None else None
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            return float(min(retry_after, self.max_seconds))
        ceiling = min(self.max_seconds, self.base_seconds * 2 ** (state.attempt_number - 1))
        return random.uniform(0, ceiling)  # noqa: S311 - jitter, not security


class CircuitBreaker:
    def __init__(
        self, *, name: str = "", threshold: int = 5, reset_seconds: float = 30.0, clock: Clock
    ) -> None:
        self.name = name
        self.threshold = threshold
        self.reset_seconds = reset_seconds
        self.clock = clock
        self.failures = 0
        self.opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        if self.clock.monotonic() - self.opened_at >= self.reset_seconds:
            return "half_open"
        return "open"

    def allow(self) -> bool:
        return self.admit() is not None

    def admit(self) -> str | None:
        """Let a call through: "closed", or "probe" (the one call after the reset time,
        whose outcome decides the state), or None (open: no call)."""
        state = self.state
        if state == "closed":
            return "closed"
        if state == "half_open" and not self._probing:
            self._probing = True
            return "probe"
        return None

    def release_probe(self) -> None:
        """The probe ended without saying whether the provider is up (cancelled, or the
        provider refused the request itself): the next call probes instead. Without this a
        probe that ends that way would leave the circuit refusing every call for good."""
        self._probing = False

    def record_success(self) -> None:
        if self.opened_at is not None:
            log.info("llm_circuit_closed", provider=self.name)
        self.failures = 0
        self.opened_at = None
        self._probing = False

    def record_failure(self) -> None:
        self.failures += 1
        if self._probing or self.failures >= self.threshold:
            self.opened_at = self.clock.monotonic()
            log.warning("llm_circuit_opened", provider=self.name, failures=self.failures)
        self._probing = False


class LLMChain:
    """The providers in fallback order, each behind its own breaker and the retry policy."""

    def __init__(
        self,
        providers: Sequence[LLMProvider],
        *,
        policy: RetryPolicy | None = None,
        breaker_threshold: int = 5,
        breaker_reset_seconds: float = 30.0,
        clock: Clock | None = None,
        catalogue: Catalogue | None = None,
    ) -> None:
        if not providers:
            raise ValueError("an LLM chain needs at least one provider")
        self.providers = list(providers)
        self.policy = policy or RetryPolicy()
        clock = clock or SystemClock()
        self.breakers = {
            p.name: CircuitBreaker(
                name=p.name,
                threshold=breaker_threshold,
                reset_seconds=breaker_reset_seconds,
                clock=clock,
            )
            for p in self.providers
        }
        self.catalogue = catalogue or default_catalogue()
        self.metrics: Metrics | None = None  # set by the process that has metrics

    def _cost(self, response: LLMResponse) -> Decimal:
        price = self.catalogue.find(response.provider, response.model)
        return cost_of(price, response.tokens) if price is not None else Decimal(0)

    async def _call(
        self, provider: LLMProvider, request: LLMRequest, on_chunk: ChunkHandler | None
    ) -> LLMResponse:
        breaker = self.breakers[provider.name]
        attempts = 0
        async for attempt in AsyncRetrying(
            # An open circuit is not retried: the chain moves on to the next provider.
            retry=retry_if_exception(
                lambda e: isinstance(e, LLMUnavailable) and not isinstance(e, CircuitOpen)
            ),
            stop=stop_after_attempt(self.policy.attempts),
            wait=self.policy.wait,
            reraise=True,
        ):
            with attempt:
                admitted = breaker.admit()
                if admitted is None:
                    raise CircuitOpen(f"{provider.name}: circuit open", provider=provider.name)
                attempts += 1
                started = time.perf_counter()
                try:
                    with tracing.span(f"llm {provider.name}", kind=SpanKind.CLIENT,
                                      attributes={"gen_ai.system": provider.name,
                                         "apex.llm.attempt": attempts}):  # fmt: skip
                        if on_chunk is None:
                            response = await provider.complete(request)
                        else:
                            response = await provider.stream(request, on_chunk)
                except LLMUnavailable:
                    breaker.record_failure()
                    self._measure(provider.name, "error", started)
                    raise
                except BaseException:
                    if admitted == "probe":
                        breaker.release_probe()
                    raise
                breaker.record_success()
                response.cost_usd = self._cost(response)
                self._measure(provider.name, "ok", started, response)
                response.attempts = attempts
                return response
        raise AssertionError("unreachable: tenacity reraises the last error")

    def _measure(
        self, provider: str, outcome: str, started: float, response: LLMResponse | None = None
    ) -> None:
        if self.metrics is None:
            return
        labels = {"provider": provider}
        self.metrics.llm_calls.add(1, {**labels, "outcome": outcome})
        self.metrics.llm_latency.record(time.perf_counter() - started, labels)
        if response is not None:
            tokens = response.tokens
            self.metrics.llm_tokens.add(tokens.input + tokens.cached_input + tokens.cache_write,
                                        {**labels, "kind": "input"})  # fmt: skip
            self.metrics.llm_tokens.add(tokens.output + tokens.reasoning,
                                        {**labels, "kind": "output"})  # fmt: skip
            self.metrics.llm_cost.add(float(response.cost_usd), labels)

    async def complete(
        self,
        request: LLMRequest,
        *,
        on_chunk: ChunkHandler | None = None,
        on_fallback: FallbackHandler | None = None,
    ) -> LLMResponse:
        errors: list[str] = []
        for index, provider in enumerate(self.providers):
            try:
                response = await self._call(provider, request, on_chunk)
            except (TimeoutError, LLMError) as exc:
                errors.append(f"{provider.name}: {exc}")
                log.warning("llm_provider_failed", provider=provider.name, error=str(exc))
                if index + 1 < len(self.providers) and on_fallback is not None:
                    await on_fallback(provider.name, self.providers[index + 1].name, str(exc))
                continue
            response.fallbacks = errors
            return response
        raise LLMUnavailable("every LLM provider failed: " + "; ".join(errors), provider="chain")
