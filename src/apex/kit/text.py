"""Text that every layer below can store: no NUL (PostgreSQL refuses it in text columns)
and no lone UTF-16 surrogates (they cannot be encoded as UTF-8). Use `Text` for every
free-form string a client sends."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator


def storable(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    if value.isascii():  # the common case, and ASCII holds no surrogate
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (no lone surrogates)") from None
    return value


Text = Annotated[str, AfterValidator(storable)]
