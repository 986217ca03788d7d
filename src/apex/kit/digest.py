"""One way to store a secret we must recognise but never read back (tokens, API keys,
session ids): its SHA-256, hex. The secrets are 256-bit random, so no salt or slow hash."""

from __future__ import annotations

import hashlib


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()
