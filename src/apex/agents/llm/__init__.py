"""LLM access for the agents: `build_chain(settings)` is the one entry point."""

from __future__ import annotations

from apex.agents.llm.base import LLMProvider
from apex.agents.llm.providers import AnthropicProvider, OfflineProvider, OpenAICompatibleProvider
from apex.agents.llm.resilience import LLMChain, RetryPolicy
from apex.kit.clock import Clock
from apex.settings import Settings

DEFAULT_MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-haiku-4-5"}


def _provider(
    kind: str, *, base_url: str | None, api_key: str | None, model: str | None, timeout: float
) -> LLMProvider:
    model = model or DEFAULT_MODELS[kind]
    if kind == "anthropic":
        return AnthropicProvider(model=model, base_url=base_url, api_key=api_key, timeout=timeout)
    return OpenAICompatibleProvider(
        model=model, base_url=base_url, api_key=api_key, timeout=timeout
    )


def build_chain(settings: Settings, clock: Clock | None = None) -> LLMChain:
    """primary → optional secondary → offline (the offline provider never fails)."""
    providers: list[LLMProvider] = []
    if settings.llm_provider != "offline":
        providers.append(
            _provider(
                settings.llm_provider,
                base_url=settings.llm_base_url,
                api_key=settings.llm_api_key.get_secret_value() if settings.llm_api_key else None,
                model=settings.llm_model,
                timeout=settings.llm_timeout_seconds,
            )
        )
    if settings.llm_fallback_provider != "none":
        key = settings.llm_fallback_api_key
        secondary = _provider(
            settings.llm_fallback_provider,
            base_url=settings.llm_fallback_base_url,
            api_key=key.get_secret_value() if key else None,
            model=settings.llm_fallback_model,
            timeout=settings.llm_timeout_seconds,
        )
        secondary.name = f"{secondary.name}-fallback"
        providers.append(secondary)
    providers.append(OfflineProvider())
    return LLMChain(
        providers,
        policy=RetryPolicy(
            attempts=settings.llm_retry_attempts,
            base_seconds=settings.llm_retry_base_seconds,
            max_seconds=settings.llm_retry_max_seconds,
        ),
        breaker_threshold=settings.llm_breaker_threshold,
        breaker_reset_seconds=settings.llm_breaker_reset_seconds,
        clock=clock,
    )
