"""A run's token and cost budget: reserve the estimate before each LLM call, settle after.

A call whose reservation would take the run past either budget is refused before anything
is sent (BudgetExceeded); the pipeline then stops the run with `agent_error`.
"""

from __future__ import annotations

from decimal import Decimal

from apex.agents.llm.base import BudgetExceeded, LLMRequest, LLMResponse
from apex.usage.models import NANOS_PER_USD
from apex.usage.pricing import ModelPrice, Tokens, cost_of


class Budget:
    def __init__(
        self, *, tokens: int, cost_nanos: int, used_tokens: int = 0, used_nanos: int = 0
    ) -> None:
        self.tokens = tokens
        self.cost_nanos = cost_nanos
        self.used_tokens = used_tokens
        self.used_nanos = used_nanos
        self.calls = 0

    def reserve(self, request: LLMRequest, price: ModelPrice | None) -> tuple[int, int]:
        tokens = request.estimated_tokens()
        nanos = 0
        if price is not None:
            estimate = Tokens(input=tokens - request.max_tokens, output=request.max_tokens)
            nanos = int(cost_of(price, estimate) * NANOS_PER_USD)
        if self.used_tokens + tokens > self.tokens:
            raise BudgetExceeded(
                f"token budget exceeded: {self.used_tokens} used + {tokens} reserved "
                f"> {self.tokens}"
            )
        if self.used_nanos + nanos > self.cost_nanos:
            spent = Decimal(self.used_nanos) / NANOS_PER_USD
            limit = Decimal(self.cost_nanos) / NANOS_PER_USD
            raise BudgetExceeded(f"cost budget exceeded: ${spent} used of ${limit}")
        self.used_tokens += tokens
        self.used_nanos += nanos
        return tokens, nanos

    def settle(self, reserved: tuple[int, int], response: LLMResponse | None) -> None:
        """Replace the reservation with what the call really used (nothing if it failed)."""
        self.used_tokens -= reserved[0]
        self.used_nanos -= reserved[1]
        if response is not None:
            self.calls += 1
            self.used_tokens += response.tokens.total
            self.used_nanos += int(response.cost_usd * NANOS_PER_USD)
