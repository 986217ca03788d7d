"""Secrets Apex must use again later (an alert rule's webhook signing secret), stored
sealed: AES-256-GCM under a key derived from `APEX_SECRET_KEY`, so a copy of the database
alone signs nothing.

Without `APEX_SECRET_KEY` (the embedded default, whose secret changes with every process)
values are stored as given: a sealed value must outlive the process that sealed it. A
value read back is opened if sealed and used as it is otherwise, so rows written before a
key was configured keep working."""

from __future__ import annotations

import base64
import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from apex.settings import Settings

PREFIX = "sealed:v1:"
NONCE_BYTES = 12
# Derived for this one use: the same APEX_SECRET_KEY also protects the signing keys.
KEY_CONTEXT = b"apex/sealing/v1\x00"


class SealBroken(Exception):
    """A sealed value this key cannot open (APEX_SECRET_KEY changed, or the row was altered)."""


class Sealer:
    def __init__(self, secret: str | None) -> None:
        key = hashlib.sha256(KEY_CONTEXT + secret.encode()).digest() if secret else None
        self._aead = AESGCM(key) if key is not None else None

    @classmethod
    def from_settings(cls, settings: Settings) -> Sealer:
        key = settings.secret_key
        return cls(key.get_secret_value() if key is not None else None)

    def seal(self, value: str) -> str:
        if self._aead is None:
            return value
        nonce = os.urandom(NONCE_BYTES)
        sealed = nonce + self._aead.encrypt(nonce, value.encode(), PREFIX.encode())
        return PREFIX + base64.urlsafe_b64encode(sealed).decode()

    def open(self, stored: str) -> str:
        if not stored.startswith(PREFIX):
            return stored
        if self._aead is None:
            raise SealBroken("a sealed secret needs APEX_SECRET_KEY to be opened")
        try:
            raw = base64.b64decode(stored[len(PREFIX) :], altchars=b"-_", validate=True)
            opened = self._aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], PREFIX.encode())
        except (InvalidTag, ValueError):  # altered: the tag, or the base64 itself
            raise SealBroken("the sealed secret does not open with this APEX_SECRET_KEY") from None
        return opened.decode()
