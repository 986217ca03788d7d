"""The pricing catalogue: validation of the shipped file and of bad entries, lookups."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from apex.usage.pricing import CatalogueError, Tokens, cost_of, default_catalogue, parse_catalogue

pytestmark = pytest.mark.unit
ENTRY = {
    "provider": "acme", "model": "m1", "capability": "small", "context_window": 1000,
    "input": "1.00", "cached_input": "0.10", "cache_write": "1.25", "output": "2.00",
    "batch_discount": "0.5", "price_date": "2026-01-01", "source": "https://acme.test/prices",
}  # fmt: skip


def test_the_shipped_catalogue_is_valid_dated_and_sourced() -> None:
    catalogue = default_catalogue()
    assert len(catalogue) >= 150
    vendors = {"openai", "anthropic", "google", "mistral", "deepseek", "xai", "cohere"}
    assert {p.provider for p in catalogue} >= vendors
    # Meta's Llama, as the common hosts sell it.
    llama_hosts = {p.provider for p in catalogue if "llama" in p.model.lower()}
    assert llama_hosts >= {"together", "groq", "fireworks", "bedrock"}
    assert all(p.source.startswith("https://") for p in catalogue)
    assert sum(p.status == "legacy" for p in catalogue) >= 40  # still billed in many accounts


@pytest.mark.parametrize(
    ("provider", "logged", "entry"),
    [
        ("anthropic", "claude-3-5-sonnet-20241022", "anthropic/claude-3-5-sonnet"),
        ("anthropic", "claude-3-5-sonnet-latest", "anthropic/claude-3-5-sonnet"),
        ("openrouter", "anthropic/claude-3.5-sonnet", "anthropic/claude-3-5-sonnet"),
        ("bedrock", "us.anthropic.claude-3-5-sonnet-20240620-v1:0", "anthropic/claude-3-5-sonnet"),
        ("aws", "anthropic.claude-3-haiku-20240307-v1:0", "anthropic/claude-3-haiku"),
        ("vertex_ai", "claude-3-5-sonnet-v2@20241022", "anthropic/claude-3-5-sonnet"),
        ("vertex_ai", "gemini-2.5-pro", "google/gemini-2.5-pro"),
        ("azure", "gpt-4o", "openai/gpt-4o"),
        ("openai", "GPT-4o-2024-08-06", "openai/gpt-4o"),
        ("openai", "gpt-35-turbo", "openai/gpt-3.5-turbo"),
        ("litellm", "openai/gpt-4.1-mini", "openai/gpt-4.1-mini"),
        ("mistral", "mistral-large-latest", "mistral/mistral-large"),
        ("mistral", "mistral-large-2411", "mistral/mistral-large"),
        ("cohere", "command-r-plus-08-2024", "cohere/command-r-plus"),
        ("xai", "grok-4-0709", "xai/grok-4"),
        ("bedrock", "meta.llama3-3-70b-instruct-v1:0", "bedrock/meta.llama3-3-70b-instruct-v1:0"),
        ("together_ai", "meta-llama/Llama-3.3-70B-Instruct-Turbo",
         "together/meta-llama/Llama-3.3-70B-Instruct-Turbo"),
    ],
)  # fmt: skip
def test_names_as_logs_spell_them_resolve_to_their_entry(
    provider: str, logged: str, entry: str
) -> None:
    found = default_catalogue().find(provider, logged)
    assert found is not None
    assert found.name == entry


def test_a_snapshot_with_its_own_price_is_not_priced_as_its_family() -> None:
    may = default_catalogue().find("openai", "gpt-4o-2024-05-13")
    assert may is not None
    assert (may.input, may.output) == (Decimal("5.00"), Decimal("15.00"))


def test_dated_model_names_resolve_to_their_family() -> None:
    catalogue = default_catalogue()
    found = catalogue.find("openai", "gpt-4o-mini-2024-07-18")
    assert found is not None
    assert found.model == "gpt-4o-mini"
    sonnet = catalogue.find("anthropic", "claude-sonnet-4-5-20250929")
    assert sonnet is not None
    assert sonnet.model == "claude-sonnet-4-5"
    # Another suffix is another model: never priced as its namesake.
    assert catalogue.find("openai", "gpt-4o-minix") is None
    assert catalogue.find("openai", "gpt-4o-audio-preview") is None
    assert catalogue.find("openai", "gpt-4o-transcribe") is None
    preview = catalogue.find("google", "gemini-2.5-flash-preview-05-20")
    assert preview is not None
    assert preview.model == "gemini-2.5-flash"
    assert catalogue.find("anthropic", "gpt-4o") is None


def test_cost_counts_each_token_category_once() -> None:
    price = parse_catalogue(json.dumps({"models": [ENTRY]})).find("acme", "m1")
    assert price is not None
    tokens = Tokens(input=1_000_000, cached_input=1_000_000, cache_write=1_000_000, output=500_000,
                    reasoning=500_000)  # fmt: skip
    assert cost_of(price, tokens) == Decimal("1.00") + Decimal("0.10") + Decimal("1.25") + 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"input": "-1"}, "models[0] (m1): input: Input should be greater than or equal to 0"),
        ({"cached_input": "5"}, "cached_input must not cost more than input"),
        ({"capability": "huge"}, "capability"),
        ({"price_date": "soon"}, "price_date"),
        ({"surprise": 1}, "surprise: Extra inputs are not permitted"),
    ],
)
def test_a_bad_entry_is_refused_naming_it(change: dict[str, object], message: str) -> None:
    with pytest.raises(CatalogueError, match="models\\[0\\] \\(m1\\)") as refused:
        parse_catalogue(json.dumps({"models": [{**ENTRY, **change}]}))
    assert message in str(refused.value)


def test_duplicates_and_empty_catalogues_are_refused() -> None:
    with pytest.raises(CatalogueError, match="acme/m1 is listed twice"):
        parse_catalogue(json.dumps({"models": [ENTRY, ENTRY]}))
    with pytest.raises(CatalogueError, match="non-empty 'models'"):
        parse_catalogue(json.dumps({"models": []}))
    with pytest.raises(CatalogueError, match="not valid JSON"):
        parse_catalogue("{")
