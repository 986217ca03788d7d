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
_VERSION_SUFFIX = re.compile(r"\d{4}-\d{2}-\d{2}|\d{8}|\d{3}|latest|preview(-[\w.-]+)?")


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

    @model_validator(mode="after")
    def _cached_not_dearer(self) -> ModelPrice:
        if self.cached_input > self.input:
            raise ValueError("cached_input must not cost more than input")
        return self


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


class Catalogue:
    """Model prices keyed by (provider, model); dated model names resolve to their family."""

    def __init__(self, prices: list[ModelPrice]) -> None:
        self._prices: dict[tuple[str, str], ModelPrice] = {}
        for price in prices:
            key = (price.provider, price.model)
            if key in self._prices:
                raise CatalogueError(f"{price.provider}/{price.model} is listed twice")
            self._prices[key] = price

    def __iter__(self) -> Iterator[ModelPrice]:
        return iter(self._prices.values())

    def __len__(self) -> int:
        return len(self._prices)

    def find(self, provider: str, model: str) -> ModelPrice | None:
        """The entry for `model`, or for the catalogue name it extends with a date or version
        suffix (`gpt-4o-2024-08-06` → `gpt-4o`, `claude-sonnet-4-5-20250929` →
        `claude-sonnet-4-5`). Any other suffix is another model (`gpt-4o-mini` is not
        `gpt-4o`) and is not guessed at."""
        exact = self._prices.get((provider, model))
        if exact is not None:
            return exact
        for (entry_provider, name), price in self._prices.items():
            if (
                entry_provider == provider
                and model.startswith(name + "-")
                and _VERSION_SUFFIX.fullmatch(model[len(name) + 1 :])
            ):
                return price
        return None

    def with_overrides(self, overrides: list[ModelPrice]) -> Catalogue:
        merged = dict(self._prices)
        for price in overrides:
            merged[(price.provider, price.model)] = price
        return Catalogue(list(merged.values()))

    def cheaper_alternative(self, price: ModelPrice, capability: Capability) -> ModelPrice | None:
        """The cheapest model of the same provider in `capability` (by output + input price)."""
        candidates = [
            entry
            for entry in self._prices.values()
            if entry.provider == price.provider
            and entry.capability == capability
            and entry.input + entry.output < price.input + price.output
        ]
        return min(candidates, key=lambda e: (e.input + e.output, e.model), default=None)


def parse_catalogue(text: str) -> Catalogue:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CatalogueError(f"the pricing catalogue is not valid JSON: {exc}") from None
    entries = document.get("models") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise CatalogueError("the pricing catalogue needs a non-empty 'models' list")
    prices = []
    for index, entry in enumerate(entries):
        try:
            prices.append(ModelPrice.model_validate(entry))
        except ValidationError as exc:
            name = entry.get("model", "?") if isinstance(entry, dict) else "?"
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'entry'}: {err['msg']}"
                for err in exc.errors()
            )
            raise CatalogueError(f"models[{index}] ({name}): {problems}") from None
    return Catalogue(prices)


@cache
def default_catalogue() -> Catalogue:
    """The catalogue shipped with Apex, loaded and validated once per process."""
    text = resources.files("apex.usage").joinpath("pricing.json").read_text("utf-8")
    return parse_catalogue(text)
