"""The pricing catalogue: what each provider's models cost, per million tokens, as Decimal.

The catalogue ships with Apex (`pricing.json`: price, date and source of each entry) and is
validated when loaded. Organisations may override entries with negotiated rates; an
override replaces the catalogue's prices for that organisation only.

Token categories never overlap: `input_tokens` are the uncached input tokens,
`cached_input_tokens` those read from the provider's prompt cache, `cache_write_tokens`
those written to it, `output_tokens` the visible output and `reasoning_tokens` the hidden
reasoning, billed at the output price.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from functools import cache
from importlib import resources
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

MILLION = Decimal(1_000_000)
CENT = Decimal("0.01")
Capability = Literal["frontier", "mid", "small"]
# Suffixes that name a snapshot of the same model: dates (2024-08-06, 20240806, 0806, 2411,
# 08-2024), versions (001, v1:0 on Bedrock), `latest`, `preview…`, `exp…`.
_SNAPSHOT = (
    r"\d{4}-\d{2}-\d{2}|\d{8}|\d{4}|\d{3}|\d{2}-\d{4}|\d{2}-\d{2}|v\d+(:\d+)?|latest|"
    r"preview|exp"
)
_VERSION_SUFFIX = re.compile(rf"(?:{_SNAPSHOT})(?:-(?:{_SNAPSHOT}))*")
# Who hosts or relays other vendors' models under their names: a model they carry is found by
# its own name (OpenRouter `anthropic/claude-3.5-sonnet`, Bedrock
# `us.anthropic.claude-3-5-sonnet-20240620-v1:0`, Vertex `claude-3-5-sonnet-v2@20241022`).
PROVIDER_ALIASES = {
    "azure": "openai",
    "azure_openai": "openai",
    "azure-openai": "openai",
    "openai-compatible": "openai",
    "gemini": "google",
    "google-ai": "google",
    "google_ai_studio": "google",
    "mistralai": "mistral",
    "x-ai": "xai",
    "grok": "xai",
    "together_ai": "together",
    "togetherai": "together",
    "fireworks_ai": "fireworks",
    "aws": "bedrock",
    "aws_bedrock": "bedrock",
    "amazon": "bedrock",
    "cohere_chat": "cohere",
    "dashscope": "alibaba",
    "qwen": "alibaba",
    "moonshotai": "moonshot",
}
HOSTS = frozenset({"openrouter", "bedrock", "vertex_ai", "vertex", "google-vertex", "litellm",
                   "portkey", "helicone", "azure_ai"})  # fmt: skip
_BEDROCK_REGION = re.compile(r"^(us|eu|apac|ap|global|us-gov|ca|jp|au)\.")
# `models/gemini-1.5-flash` (the Gemini API), `projects/P/locations/L/publishers/google/models/
# gemini-1.5-pro-002` (Vertex AI): the model is the last segment, its vendor the publisher.
_RESOURCE_NAME = re.compile(r"^(?:.*/)?(?:publishers/(?P<vendor>[^/]+)/)?models/(?P<model>[^/]+)$")
_BEDROCK_VENDORS = {"anthropic", "meta", "amazon", "mistral", "cohere", "deepseek", "openai"}


class CatalogueError(ValueError):
    """The pricing catalogue (or an override) is invalid; the message names the entry."""


class ModelPrice(BaseModel):
    """Prices of one model in USD per million tokens."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    provider: str = Field(min_length=1, max_length=50)
    model: str = Field(min_length=1, max_length=100)
    capability: Capability
    context_window: int = Field(gt=0)
    input: Decimal = Field(ge=0)
    cached_input: Decimal = Field(ge=0)
    cache_write: Decimal = Field(ge=0)
    output: Decimal = Field(ge=0)
    batch_discount: Decimal = Field(ge=0, lt=1, description="0.50 = the batch API halves it")
    price_date: date
    source: str = Field(min_length=1)
    status: Literal["current", "legacy"] = Field(
        default="current", description="legacy: still billed, never recommended"
    )
    reasoning: bool = Field(default=False, description="bills hidden reasoning tokens as output")
    kind: Literal["chat", "embedding"] = "chat"
    fine_tuned: bool = Field(
        default=False,
        description="the rates of a customer's fine-tune of a model (OpenAI's ft:BASE:…): "
        "never a model to move work to, and its work is not moved to another model",
    )
    aliases: tuple[str, ...] = Field(default=(), description="other names of the same model")
    derived: bool = Field(
        default=False, description="estimated from the organisation's reported costs"
    )

    @model_validator(mode="after")
    def _cached_not_dearer(self) -> ModelPrice:
        if self.cached_input > self.input:
            raise ValueError("cached_input must not cost more than input")
        return self

    @property
    def name(self) -> str:
        return f"{self.provider}/{self.model}"


@dataclass(frozen=True, slots=True)
class Tokens:
    """Token counts of one call or of a sum of calls, by category (never overlapping)."""

    input: int = 0
    cached_input: int = 0
    cache_write: int = 0
    output: int = 0
    reasoning: int = 0

    def __add__(self, other: Tokens) -> Tokens:
        return Tokens(
            self.input + other.input,
            self.cached_input + other.cached_input,
            self.cache_write + other.cache_write,
            self.output + other.output,
            self.reasoning + other.reasoning,
        )

    @property
    def total(self) -> int:
        return self.input + self.cached_input + self.cache_write + self.output + self.reasoning

    @property
    def prompt(self) -> int:
        return self.input + self.cached_input + self.cache_write

    @property
    def completion(self) -> int:
        return self.output + self.reasoning


def cost_of(price: ModelPrice, tokens: Tokens) -> Decimal:
    """Exact cost in USD (not rounded: round only what is shown)."""
    return (
        Decimal(tokens.input) * price.input
        + Decimal(tokens.cached_input) * price.cached_input
        + Decimal(tokens.cache_write) * price.cache_write
        + Decimal(tokens.output + tokens.reasoning) * price.output
    ) / MILLION


def to_cents(amount: Decimal) -> Decimal:
    """Round half up to the cent, for what is shown and billed."""
    return amount.quantize(CENT, rounding=ROUND_HALF_UP)


def catalogue_provider(provider: str) -> str:
    """The catalogue's name for a provider as logs spell it (`azure` → `openai`)."""
    return PROVIDER_ALIASES.get(provider.lower(), provider.lower())


def is_fine_tune(model: str) -> bool:
    """An OpenAI fine-tune's name: ft:BASE:ORG[:SUFFIX]:ID (or the catalogue's ft:BASE)."""
    return model.lower().startswith("ft:")


def fine_tune_base(model: str) -> str | None:
    """`ft:BASE` of a fine-tune's name, the catalogue entry pricing every fine-tune of BASE."""
    return "ft:" + model[3:].split(":", 1)[0] if is_fine_tune(model) else None


def _spellings(provider: str, model: str) -> Iterator[tuple[str, str]]:
    """The (provider, model) pairs a logged name may stand for, most literal first."""
    provider = PROVIDER_ALIASES.get(provider.lower(), provider.lower())
    model = model.strip()
    yield provider, model
    name = model
    if tuned := fine_tune_base(name):  # priced at its base model's fine-tuned rates
        yield provider, tuned
        return
    if resource := _RESOURCE_NAME.match(name):  # Gemini API and Vertex resource names
        yield from _spellings(resource["vendor"] or provider, resource["model"])
        return
    if "/" in name:  # OpenRouter and LiteLLM: vendor/model (bedrock/anthropic.claude-…)
        vendor, rest = name.split("/", 1)
        vendor = PROVIDER_ALIASES.get(vendor.lower(), vendor.lower())
        yield from _spellings(vendor, rest)
        return
    if "@" in name:  # Vertex: claude-3-5-sonnet-v2@20241022
        name = name.replace("@", "-")
        yield provider, name
    if provider in ("bedrock", *HOSTS) or _BEDROCK_REGION.match(name):
        bare = _BEDROCK_REGION.sub("", name)
        vendor, _, rest = bare.partition(".")
        if vendor in _BEDROCK_VENDORS and rest:
            yield "bedrock", bare
            yield vendor, rest
    if "." in name and name.startswith("claude"):  # claude-3.5-sonnet → claude-3-5-sonnet
        yield provider, name.replace(".", "-")


class Catalogue:
    """Model prices keyed by (provider, model); logged names resolve to entries through
    aliases, hosts' spellings and snapshot suffixes (`Catalogue.find`)."""

    def __init__(self, prices: list[ModelPrice]) -> None:
        self._prices: dict[tuple[str, str], ModelPrice] = {}
        self._names: dict[tuple[str, str], ModelPrice] = {}
        for price in prices:
            key = (price.provider, price.model)
            if key in self._prices:
                raise CatalogueError(f"{price.provider}/{price.model} is listed twice")
            self._prices[key] = price
        for price in prices:  # aliases first, so an entry's own name wins over an alias
            for alias in price.aliases:
                self._names[(price.provider, alias.lower())] = price
        for price in prices:
            self._names[(price.provider, price.model.lower())] = price
        self._found: dict[tuple[str, str], ModelPrice | None] = {}

    def __iter__(self) -> Iterator[ModelPrice]:
        return iter(self._prices.values())

    def __len__(self) -> int:
        return len(self._prices)

    def find(self, provider: str, model: str) -> ModelPrice | None:
        """The entry for a model as logs spell it: its name or an alias (any case); a
        host's spelling of it (`openrouter` + `anthropic/claude-3.5-sonnet`, `bedrock` +
        `us.anthropic.claude-3-5-sonnet-20240620-v1:0`, `azure` + `gpt-4o`); or a snapshot
        of it (`gpt-4o-2024-08-06` → `gpt-4o`, unless that snapshot has its own entry).
        Any other suffix is another model (`gpt-4o-mini` is not `gpt-4o`) and is not
        guessed at. On a host, a name found under exactly one vendor is that vendor's."""
        key = (provider, model)
        if key not in self._found:
            self._found[key] = self._resolve(provider, model)
        return self._found[key]

    def _resolve(self, provider: str, model: str) -> ModelPrice | None:
        spellings = list(dict.fromkeys(_spellings(provider, model)))
        for candidate_provider, name in spellings:
            price = self._named(candidate_provider, name)
            if price is not None:
                return price
        if PROVIDER_ALIASES.get(provider.lower(), provider.lower()) in HOSTS:
            vendors = {p for p, _ in self._prices}
            found = {
                price.name: price
                for vendor in vendors
                for _, name in spellings
                if (price := self._named(vendor, name)) is not None
            }
            if len(found) == 1:
                return next(iter(found.values()))
        return None

    def _named(self, provider: str, name: str) -> ModelPrice | None:
        lowered = name.lower()
        exact = self._names.get((provider, lowered))
        if exact is not None:
            return exact
        best: tuple[int, ModelPrice] | None = None
        for (entry_provider, entry_name), price in self._names.items():
            if (
                entry_provider == provider
                and lowered.startswith(entry_name + "-")
                and _VERSION_SUFFIX.fullmatch(lowered[len(entry_name) + 1 :])
                and (best is None or len(entry_name) > best[0])
            ):
                best = (len(entry_name), price)
        return best[1] if best else None

    def with_overrides(self, overrides: list[ModelPrice]) -> Catalogue:
        merged = dict(self._prices)
        for price in overrides:
            merged[(price.provider, price.model)] = price
        return Catalogue(list(merged.values()))

    def candidates(self, provider: str) -> list[ModelPrice]:
        """Current chat models of a provider: what a workload may be moved to."""
        return [
            entry
            for entry in self._prices.values()
            if entry.provider == provider
            and entry.status == "current"
            and entry.kind == "chat"
            and not entry.derived
            and not entry.fine_tuned
        ]


def parse_catalogue(text: str) -> Catalogue:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CatalogueError(f"the pricing catalogue is not valid JSON: {exc}") from None
    entries = document.get("models") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise CatalogueError("the pricing catalogue needs a non-empty 'models' list")
    defaults = _provider_defaults(document.get("providers", []))
    prices = []
    for index, entry in enumerate(entries):
        try:
            prices.append(ModelPrice.model_validate(_with_defaults(entry, defaults)))
        except ValidationError as exc:
            name = entry.get("model", "?") if isinstance(entry, dict) else "?"
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'entry'}: {err['msg']}"
                for err in exc.errors()
            )
            raise CatalogueError(f"models[{index}] ({name}): {problems}") from None
    return Catalogue(prices)


def _provider_defaults(providers: object) -> dict[str, dict[str, object]]:
    """Per provider, what its entries leave out: `source`, `batch_discount`."""
    if not isinstance(providers, list):
        raise CatalogueError("'providers' must be a list")
    defaults: dict[str, dict[str, object]] = {}
    for index, item in enumerate(providers):
        if not isinstance(item, dict) or not isinstance(item.get("provider"), str):
            raise CatalogueError(f"providers[{index}] needs a 'provider' name")
        unknown = set(item) - {"provider", "source", "batch_discount"}
        if unknown:
            raise CatalogueError(f"providers[{index}]: unknown keys {sorted(unknown)}")
        defaults[item["provider"]] = {k: v for k, v in item.items() if k != "provider"}
    return defaults


def _with_defaults(entry: object, defaults: dict[str, dict[str, object]]) -> object:
    """An entry completed by its provider's defaults; cache prices default to input."""
    if not isinstance(entry, dict):
        return entry
    completed = {**defaults.get(str(entry.get("provider")), {}), **entry}
    if "input" in completed:
        completed.setdefault("cached_input", completed["input"])
        completed.setdefault("cache_write", completed["input"])
    return completed


@cache
def default_catalogue() -> Catalogue:
    """The catalogue shipped with Apex, loaded and validated once per process."""
    text = resources.files("apex.usage").joinpath("pricing.json").read_text("utf-8")
    return parse_catalogue(text)


# --- importing other catalogues ---------------------------------------------------------------
LITELLM_PROVIDERS = {
    "text-completion-openai": "openai",
    "vertex_ai-anthropic_models": "anthropic",
    "vertex_ai-language-models": "google",
    "vertex_ai-mistral_models": "mistral",
    "vertex_ai-llama_models": "vertex_ai",
    "bedrock_converse": "bedrock",
    "codestral": "mistral",
    "text-completion-codestral": "mistral",
}
_LITELLM_KINDS = {
    "chat": "chat",
    "completion": "chat",
    "responses": "chat",
    "embedding": "embedding",
}
_PROVIDER_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,49}$")


@dataclass
class ImportedCatalogue:
    """Entries read from a file, and what was skipped and why (counted by reason)."""

    prices: list[ModelPrice]
    skipped: dict[str, int]


def read_catalogue_file(text: str, base: Catalogue, today: date) -> ImportedCatalogue:
    """Apex's own format (a `models` list) or LiteLLM's `model_prices_and_context_window.json`
    (an object keyed by model name), as validated entries."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CatalogueError(f"not valid JSON: {exc}") from None
    if isinstance(document, dict) and isinstance(document.get("models"), list):
        return ImportedCatalogue(list(parse_catalogue(text)), {})
    if isinstance(document, dict):
        return _from_litellm(document, base, today)
    raise CatalogueError("expected Apex's catalogue (a 'models' list) or LiteLLM's (an object)")


def _per_million(value: object) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        per_token = Decimal(str(value))
    except ArithmeticError:
        return None
    if not per_token.is_finite() or per_token < 0:
        return None
    return (per_token * MILLION).quantize(Decimal("0.000001")).normalize()


def _guess_capability(output: Decimal) -> Capability:
    """For a model Apex does not know: its tier from its output price (documented)."""
    if output >= 8:
        return "frontier"
    return "mid" if output >= Decimal("1.5") else "small"


def _litellm_entry(name: str, entry: dict[str, object], base: Catalogue, today: date) -> ModelPrice:
    raw_provider = str(entry.get("litellm_provider", "")).lower()
    provider = catalogue_provider(LITELLM_PROVIDERS.get(raw_provider, raw_provider))
    model = name
    for prefix in {raw_provider, provider}:
        model = model.removeprefix(prefix + "/")
    if not _PROVIDER_NAME.match(provider) or not 0 < len(model) <= 100:
        raise ValueError("unusable provider or model name")
    input_price = _per_million(entry.get("input_cost_per_token"))
    output_price = _per_million(entry.get("output_cost_per_token", 0))
    if input_price is None or output_price is None:
        raise ValueError("no per-token price")
    # What LiteLLM leaves out comes from the entry Apex resolves the name to, if any.
    known = base.find(provider, model)
    cached = _per_million(entry.get("cache_read_input_token_cost"))
    written = _per_million(entry.get("cache_creation_input_token_cost"))
    context = entry.get("max_input_tokens") or entry.get("max_tokens")
    return ModelPrice(
        provider=provider,
        model=model,
        capability=known.capability if known else _guess_capability(output_price),
        context_window=context if isinstance(context, int) and context > 0 else 128_000,
        input=input_price,
        cached_input=min(
            cached if cached is not None else known.cached_input if known else input_price,
            input_price,
        ),
        cache_write=written if written is not None else known.cache_write if known else input_price,
        output=output_price,
        batch_discount=known.batch_discount if known else Decimal(0),
        price_date=today,
        source=f"imported from LiteLLM's catalogue ({name})",
        status=known.status if known else "current",
        reasoning=bool(entry.get("supports_reasoning")) or bool(known and known.reasoning),
        kind="embedding" if entry.get("mode") == "embedding" else "chat",
        fine_tuned=is_fine_tune(model),
    )


def _from_litellm(document: dict[str, object], base: Catalogue, today: date) -> ImportedCatalogue:
    prices: dict[tuple[str, str], ModelPrice] = {}
    skipped: dict[str, int] = {}
    for name, entry in document.items():
        if name == "sample_spec" or not isinstance(entry, dict):
            continue
        if _LITELLM_KINDS.get(str(entry.get("mode", "chat"))) is None:
            skipped[f"mode {entry.get('mode')}"] = skipped.get(f"mode {entry.get('mode')}", 0) + 1
            continue
        try:
            price = _litellm_entry(name, entry, base, today)
        except ValidationError:
            skipped["invalid entry"] = skipped.get("invalid entry", 0) + 1
            continue
        except ValueError as exc:
            skipped[str(exc)] = skipped.get(str(exc), 0) + 1
            continue
        if (price.provider, price.model) in prices:
            skipped["another entry names the same model"] = (
                skipped.get("another entry names the same model", 0) + 1
            )
            continue
        prices[(price.provider, price.model)] = price
    return ImportedCatalogue(list(prices.values()), skipped)
