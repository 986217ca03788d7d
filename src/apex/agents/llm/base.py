"""The provider interface every LLM backend implements, and the errors it raises.

LLMError
├── LLMUnavailable      retryable: timeout, connection, 5xx, 429 (with retry_after)
│   └── CircuitOpen     the provider's breaker is open; nothing was sent
├── LLMRejected         not retryable: 4xx other than 429 (bad request, auth)
└── BudgetExceeded      the run's token or cost budget cannot cover the call
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Protocol

from apex.usage.pricing import Tokens

ChunkHandler = Callable[[str], Awaitable[None]]


class LLMError(Exception):
    provider: str = ""


class LLMUnavailable(LLMError):
    def __init__(self, message: str, *, provider: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.provider = provider
        self.retry_after = retry_after


class CircuitOpen(LLMUnavailable):
    pass


class LLMRejected(LLMError):
    def __init__(self, message: str, *, provider: str) -> None:
        super().__init__(message)
        self.provider = provider


class BudgetExceeded(LLMError):
    pass


@dataclass(frozen=True)
class LLMRequest:
    system: str
    prompt: str
    max_tokens: int = 400
    temperature: float = 0.0
    purpose: str = "phrase"  # "classify" asks for JSON

    def estimated_tokens(self) -> int:
        """An upper estimate before the call (≈4 characters per token, plus the output cap);
        the budget reserves this much and settles to the provider's exact usage after."""
        return (len(self.system) + len(self.prompt)) // 3 + 16 + self.max_tokens


@dataclass
class LLMResponse:
    text: str
    provider: str
    model: str
    tokens: Tokens
    cost_usd: Decimal = Decimal(0)
    attempts: int = 1
    fallbacks: list[str] = field(default_factory=list)


class LLMProvider(Protocol):
    name: str
    model: str

    async def complete(self, request: LLMRequest) -> LLMResponse: ...

    async def stream(self, request: LLMRequest, on_chunk: ChunkHandler) -> LLMResponse:
        """Like `complete`, calling `on_chunk` with each piece of text as it arrives."""
        ...
