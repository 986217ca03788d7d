"""LLM providers: any OpenAI-compatible server (the `openai` SDK), Anthropic, and the
offline deterministic provider that is the default.

The SDKs' own retries are off (`max_retries=0`): retries, backoff and the circuit breaker
live in one place (apex.agents.llm.resilience) so the policy is the same for every provider.
Each SDK is imported when its provider is built (anthropic's import alone takes seconds),
so the CLI and the offline default never pay for them.
"""

from __future__ import annotations

import importlib
import json
import re
from types import ModuleType
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    import anthropic
    import openai

from apex.agents.llm.base import (
    ChunkHandler,
    LLMRejected,
    LLMRequest,
    LLMResponse,
    LLMUnavailable,
)
from apex.usage.pricing import Tokens


def _retry_after(headers: Any) -> float | None:
    value = headers.get("retry-after") if headers is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


# How long an idle connection to a provider is kept for the next call. The SDKs keep one 5 s,
# exactly as long as uvicorn-based servers (vLLM, the tests' LLM server) keep theirs: a call
# sent as the server closes the connection fails before reaching it, and counts against the
# provider's circuit breaker. Calls of one run follow each other within this.
IDLE_CONNECTION_SECONDS = 2.0


def _http_client(sdk: ModuleType) -> Any:
    """The SDK's own HTTP client and connection limits, letting idle connections go sooner."""
    limits = sdk.DEFAULT_CONNECTION_LIMITS
    return sdk.DefaultAsyncHttpxClient(
        limits=httpx.Limits(
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=IDLE_CONNECTION_SECONDS,
        )
    )


def _translate(exc: Exception, provider: str, sdk: ModuleType) -> Exception:
    """SDK exceptions → LLMUnavailable (worth retrying) or LLMRejected (not). Both SDKs
    name their exception classes alike."""
    if isinstance(exc, sdk.APITimeoutError):
        return LLMUnavailable(f"{provider}: request timed out", provider=provider)
    if isinstance(exc, sdk.APIConnectionError):
        return LLMUnavailable(f"{provider}: connection failed ({exc})", provider=provider)
    if isinstance(exc, sdk.APIStatusError):
        status = exc.status_code
        if status == 429 or status >= 500:
            return LLMUnavailable(
                f"{provider}: HTTP {status}",
                provider=provider,
                retry_after=_retry_after(exc.response.headers),
            )
        return LLMRejected(f"{provider}: HTTP {status}: {exc.message}", provider=provider)
    return exc


class OpenAICompatibleProvider:
    """OpenAI, vLLM, Ollama, llama.cpp: anything serving /v1/chat/completions."""

    def __init__(
        self,
        *,
        model: str,
        base_url: str | None,
        api_key: str | None,
        timeout: float,
        name: str = "openai",
    ) -> None:
        self.name = name
        self.model = model
        self.sdk = importlib.import_module("openai")
        self.client: openai.AsyncOpenAI = self.sdk.AsyncOpenAI(
            base_url=base_url,
            api_key=api_key or "not-needed",
            timeout=timeout,
            max_retries=0,
            http_client=_http_client(self.sdk),
        )

    def _arguments(self, request: LLMRequest) -> dict[str, Any]:
        return {
            "model": self.model,
            "messages": [
                {"role": "system", "content": request.system},
                {"role": "user", "content": request.prompt},
            ],
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
        }

    @staticmethod
    def _tokens(usage: Any) -> Tokens:
        if usage is None:
            return Tokens()
        cached = getattr(getattr(usage, "prompt_tokens_details", None), "cached_tokens", 0) or 0
        reasoning = (
            getattr(getattr(usage, "completion_tokens_details", None), "reasoning_tokens", 0) or 0
        )
        return Tokens(
            input=usage.prompt_tokens - cached,
            cached_input=cached,
            output=usage.completion_tokens - reasoning,
            reasoning=reasoning,
        )

    async def complete(self, request: LLMRequest) -> LLMResponse:
        try:
            response = await self.client.chat.completions.create(**self._arguments(request))
        except self.sdk.OpenAIError as exc:
            raise _translate(exc, self.name, self.sdk) from exc
        text = response.choices[0].message.content or "" if response.choices else ""
        return LLMResponse(text, self.name, response.model, self._tokens(response.usage))

    async def stream(self, request: LLMRequest, on_chunk: ChunkHandler) -> LLMResponse:
        parts: list[str] = []
        usage: Any = None
        model = self.model
        try:
            stream = await self.client.chat.completions.create(
                **self._arguments(request),
                stream=True,
                stream_options={"include_usage": True},
            )
            async for chunk in stream:
                model = chunk.model or model
                if chunk.usage is not None:
                    usage = chunk.usage
                for choice in chunk.choices:
                    if choice.delta.content:
                        parts.append(choice.delta.content)
                        await on_chunk(choice.delta.content)
        except self.sdk.OpenAIError as exc:
            raise _translate(exc, self.name, self.sdk) from exc
        return LLMResponse("".join(parts), self.name, model, self._tokens(usage))


class AnthropicProvider:
    def __init__(
        self, *, model: str, base_url: str | None, api_key: str | None, timeout: float
    ) -> None:
        self.name = "anthropic"
        self.model = model
        self.sdk = importlib.import_module("anthropic")
        self.client: anthropic.AsyncAnthropic = self.sdk.AsyncAnthropic(
            api_key=api_key, base_url=base_url, timeout=timeout, max_retries=0,
            http_client=_http_client(self.sdk),
        )  # fmt: skip

    @staticmethod
    def _tokens(usage: Any) -> Tokens:
        return Tokens(
            input=usage.input_tokens,
            cached_input=getattr(usage, "cache_read_input_tokens", 0) or 0,
            cache_write=getattr(usage, "cache_creation_input_tokens", 0) or 0,
            output=usage.output_tokens,
        )

    def _arguments(self, request: LLMRequest) -> dict[str, Any]:
        return {
            "model": self.model,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "system": request.system,
            "messages": [{"role": "user", "content": request.prompt}],
        }

    async def complete(self, request: LLMRequest) -> LLMResponse:
        try:
            message = await self.client.messages.create(**self._arguments(request))
        except self.sdk.AnthropicError as exc:
            raise _translate(exc, self.name, self.sdk) from exc
        text = "".join(getattr(block, "text", "") for block in message.content)
        return LLMResponse(text, self.name, message.model, self._tokens(message.usage))

    async def stream(self, request: LLMRequest, on_chunk: ChunkHandler) -> LLMResponse:
        try:
            async with self.client.messages.stream(**self._arguments(request)) as stream:
                async for text in stream.text_stream:
                    await on_chunk(text)
                message = await stream.get_final_message()
        except self.sdk.AnthropicError as exc:
            raise _translate(exc, self.name, self.sdk) from exc
        text = "".join(getattr(block, "text", "") for block in message.content)
        return LLMResponse(text, self.name, message.model, self._tokens(message.usage))


INTENT_WORDS = {
    "model_right_sizing": ("model", "cheaper", "downgrade", "right-siz", "smaller"),
    "prompt_caching": ("cach", "prefix", "repeat"),
    "response_caching": ("cach", "duplicate", "same question", "repeat"),
    "batch_api": ("batch", "overnight", "offline", "nightly"),
    "prompt_trimming": ("trim", "context", "long prompt", "tokens"),
    "error_waste": ("error", "retr", "fail", "timeout"),
}


class OfflineProvider:
    """Deterministic and free: classifies by keywords and phrases from the facts it is given.
    The default, so Apex works with no LLM at all; also the last link of every fallback chain."""

    name = "offline"
    model = "offline-1"

    @staticmethod
    def _count(text: str) -> int:
        return len(re.findall(r"\w+|[^\w\s]", text))

    def _answer(self, request: LLMRequest) -> str:
        if request.purpose == "classify":
            question = request.prompt.lower()
            intents = sorted(
                intent
                for intent, words in INTENT_WORDS.items()
                if any(word in question for word in words)
            )
            return json.dumps({"intents": intents or sorted(INTENT_WORDS)})
        facts = [line.strip("- ") for line in request.prompt.splitlines() if line.startswith("- ")]
        if facts:
            return " ".join(facts[:5])
        first = request.prompt.strip().split("\n\n")[0]
        return first if len(first) <= 600 else first[: first.rfind(". ", 0, 600) + 1]

    async def complete(self, request: LLMRequest) -> LLMResponse:
        text = self._answer(request)
        tokens = Tokens(
            input=self._count(request.system + request.prompt), output=self._count(text)
        )
        return LLMResponse(text, self.name, self.model, tokens)

    async def stream(self, request: LLMRequest, on_chunk: ChunkHandler) -> LLMResponse:
        response = await self.complete(request)
        for word in re.findall(r"\S+\s*", response.text):
            await on_chunk(word)
        return response
