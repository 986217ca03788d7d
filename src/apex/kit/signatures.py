"""Signed webhooks, one scheme both ways: `t=<unix seconds>,v1=<hex HMAC-SHA256 of
"{t}.{body}">` (Stripe's, which Apex verifies on payment events and uses for its own alert
webhooks, so receivers can reuse the same verification code)."""

from __future__ import annotations

import hashlib
import hmac


def hmac_hex(secret: str, timestamp: int, payload: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256).hexdigest()


def signature_header(secret: str, timestamp: int, payload: bytes) -> str:
    return f"t={timestamp},v1={hmac_hex(secret, timestamp, payload)}"
