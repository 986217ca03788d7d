"""The pricing catalogue: validation of the shipped file and of bad entries, lookups."""

from __future__ import annotations

import json
from datetime import date
from decimal import Decimal
from importlib import resources

import pytest

from apex.usage.pricing import (
    CatalogueError,
    Tokens,
    cost_of,
    default_catalogue,
    parse_catalogue,
    read_catalogue_file,
)
from apex.usage.schemas import PriceIn
from apex.usage.service import price_from

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
        ("google", "models/gemini-1.5-flash", "google/gemini-1.5-flash"),
        ("gemini", "models/gemini-2.5-pro", "google/gemini-2.5-pro"),
        ("vertex_ai", "projects/acme-prod/locations/us-central1/publishers/google/models/"
         "gemini-1.5-pro-002", "google/gemini-1.5-pro"),
        ("vertex_ai", "publishers/anthropic/models/claude-3-5-sonnet-v2@20241022",
         "anthropic/claude-3-5-sonnet"),
        ("fireworks", "accounts/fireworks/models/deepseek-v3",
         "fireworks/accounts/fireworks/models/deepseek-v3"),
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


def test_a_fine_tune_is_priced_at_its_base_models_fine_tuned_rates() -> None:
    # OpenAI bills a fine-tune of gpt-4o-mini at $0.30 in / $0.15 cached / $1.20 out per
    # million tokens (the base model: $0.15 / $0.075 / $0.60).
    catalogue = default_catalogue()
    for logged in (
        "ft:gpt-4o-mini-2024-07-18:acme:support-bot:9xYzAbC1",
        "ft:gpt-4o-mini-2024-07-18:acme::B2c3dE4f",
        "FT:GPT-4o-mini-2024-07-18:x::y",
    ):
        price = catalogue.find("openai", logged)
        assert price is not None, logged
        assert (price.name, price.fine_tuned) == ("openai/ft:gpt-4o-mini", True)
    price = catalogue.find("openrouter", "openai/ft:gpt-4o-2024-08-06:acme::Q1")
    assert price is not None
    assert price.name == "openai/ft:gpt-4o"
    tuned = catalogue.find("openai", "ft:gpt-4o-mini-2024-07-18:acme::B2c3dE4f")
    assert tuned is not None
    tokens = Tokens(input=1_000_000, cached_input=2_000_000, output=500_000)
    assert cost_of(tuned, tokens) == Decimal("0.30") + Decimal("0.30") + Decimal("0.60")
    # A fine-tune of a model without published fine-tuned rates stays unpriced, and the
    # base model is not a fine-tune.
    assert catalogue.find("openai", "ft:davinci-002:acme::x") is None
    base = catalogue.find("openai", "gpt-4o-mini-2024-07-18")
    assert base is not None
    assert not base.fine_tuned
    # A negotiated price for one fine-tune keeps it a fine-tune.
    negotiated = price_from(
        "openai",
        "ft:gpt-4o-mini-2024-07-18:acme::B2c3dE4f",
        PriceIn(input=Decimal("0.25"), output=Decimal(1)),
        date(2026, 11, 1),
    )
    assert negotiated.fine_tuned
    assert not price_from(
        "openai",
        "gpt-4o-mini",
        PriceIn(input=Decimal("0.1"), output=Decimal("0.5")),
        date(2026, 11, 1),
    ).fine_tuned
    # Nobody else's work is moved to a customer's fine-tune.
    assert not [p for p in catalogue.candidates("openai") if p.fine_tuned]
    assert {p.model for p in catalogue if p.fine_tuned} >= {"ft:gpt-4o", "ft:gpt-4o-mini"}


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


LITELLM = {
    "sample_spec": {"input_cost_per_token": 0, "litellm_provider": "openai", "mode": "chat"},
    "gpt-4o": {"input_cost_per_token": 2.5e-06, "output_cost_per_token": 1e-05,
               "cache_read_input_token_cost": 1.25e-06, "litellm_provider": "openai",
               "mode": "chat", "max_input_tokens": 128000},
    "azure/gpt-4o": {"input_cost_per_token": 2.75e-06, "output_cost_per_token": 1.1e-05,
                     "litellm_provider": "azure", "mode": "chat"},
    "together_ai/acme/mystery-2": {"input_cost_per_token": 9e-07, "output_cost_per_token": 9e-07,
                                   "litellm_provider": "together_ai", "mode": "chat"},
    "bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0": {
        "input_cost_per_token": 3e-06, "output_cost_per_token": 1.5e-05,
        "litellm_provider": "bedrock", "mode": "chat"},
    "dall-e-3": {"litellm_provider": "openai", "mode": "image_generation"},
    "broken": {"input_cost_per_token": "abc", "litellm_provider": "acme", "mode": "chat"},
    "big-spender": {"input_cost_per_token": 1e-05, "output_cost_per_token": 3e-05,
                    "litellm_provider": "acme", "mode": "chat", "supports_reasoning": True},
}  # fmt: skip


def test_litellm_catalogues_import_with_what_apex_knows_filled_in() -> None:
    imported = read_catalogue_file(json.dumps(LITELLM), default_catalogue(), date(2026, 11, 25))
    prices = {p.name: p for p in imported.prices}
    assert set(prices) == {
        "openai/gpt-4o",
        "together/acme/mystery-2",
        "bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0",
        "acme/big-spender",
    }
    gpt4o = prices["openai/gpt-4o"]
    assert (gpt4o.input, gpt4o.cached_input, gpt4o.output) == (
        Decimal("2.5"), Decimal("1.25"), Decimal("10"),
    )  # fmt: skip
    # A hosted Claude keeps the cache prices and tier Apex knows for that model.
    hosted = prices["bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0"]
    assert (hosted.cached_input, hosted.cache_write, hosted.capability) == (
        Decimal("0.30"), Decimal("3.75"), "frontier",
    )  # fmt: skip
    # A model Apex does not know: its tier from its output price ($30/M: frontier).
    unknown = prices["acme/big-spender"]
    assert (unknown.capability, unknown.reasoning, unknown.cached_input) == (
        "frontier", True, Decimal("10"),
    )  # fmt: skip
    assert prices["together/acme/mystery-2"].capability == "small"
    assert imported.skipped == {
        "another entry names the same model": 1,  # azure/gpt-4o is openai/gpt-4o to Apex
        "mode image_generation": 1,
        "no per-token price": 1,
    }


def test_apex_catalogues_import_as_they_are_and_garbage_is_refused() -> None:
    text = resources.files("apex.usage").joinpath("pricing.json").read_text("utf-8")
    imported = read_catalogue_file(text, default_catalogue(), date(2026, 11, 25))
    assert len(imported.prices) == len(default_catalogue())
    with pytest.raises(CatalogueError, match="not valid JSON"):
        read_catalogue_file("{", default_catalogue(), date(2026, 11, 25))
    with pytest.raises(CatalogueError, match="expected Apex's catalogue"):
        read_catalogue_file("[1, 2]", default_catalogue(), date(2026, 11, 25))
