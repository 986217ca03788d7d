"""The signing key ring: RS256 keys kept in the database, shared by every instance.

The newest key that is not retired signs. Retired keys keep verifying for
`APEX_SIGNING_KEY_OVERLAP_SECONDS`, then disappear from `/.well-known/jwks.json` and from
verification. Private keys are stored encrypted with `APEX_SECRET_KEY`; a key this process
cannot decrypt (another secret) is used for verification only. Each instance reloads the
ring every `APEX_SIGNING_KEYS_REFRESH_SECONDS`, so `apex keys rotate` reaches all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from sqlalchemy import select, update

from apex.identity.models import SigningKey
from apex.kit.clock import Clock
from apex.kit.db import Database

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class _Key:
    kid: str
    public: Any
    private: Any | None
    jwk: dict[str, Any]
    created_at: datetime
    retired_at: datetime | None


def _new_key(secret: str) -> SigningKey:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    kid = secrets.token_urlsafe(12)
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(secret.encode()),
    ).decode()
    jwk = json.loads(RSAAlgorithm.to_jwk(private.public_key()))
    jwk |= {"kid": kid, "use": "sig", "alg": "RS256"}
    return SigningKey(kid=kid, algorithm="RS256", private_key_pem=pem, public_jwk=jwk)


class KeyRing:
    def __init__(
        self, database: Database, *, secret: str, clock: Clock, overlap_seconds: int
    ) -> None:
        self.database = database
        self.secret = secret
        self.clock = clock
        self.overlap = timedelta(seconds=overlap_seconds)
        self._keys: dict[str, _Key] = {}
        self._signer: _Key | None = None
        self._task: asyncio.Task[None] | None = None

    def _decrypt(self, row: SigningKey) -> Any | None:
        try:
            return serialization.load_pem_private_key(
                row.private_key_pem.encode(), self.secret.encode()
            )
        except (ValueError, TypeError):
            return None

    def _private_key(self, row: SigningKey) -> Any | None:
        """A key's private half, decrypted once per process: a kid's key never changes, and
        decrypting costs about 50 ms of CPU that would stall every request on each reload."""
        known = self._keys.get(row.kid)
        if known is not None and known.private is not None:
            return known.private
        return self._decrypt(row)

    async def load(self) -> None:
        now = self.clock.now()
        async with self.database.unit_of_work(primary=True) as session:
            rows = (await session.scalars(select(SigningKey).order_by(SigningKey.created_at))).all()
        keys: dict[str, _Key] = {}
        for row in rows:
            if row.retired_at is not None and row.retired_at + self.overlap <= now:
                continue
            private = self._private_key(row) if row.retired_at is None else None
            public = RSAAlgorithm.from_jwk(json.dumps(row.public_jwk))
            keys[row.kid] = _Key(
                row.kid, public, private, row.public_jwk, row.created_at, row.retired_at
            )
        self._keys = keys
        signers = [k for k in keys.values() if k.private is not None and k.retired_at is None]
        self._signer = signers[-1] if signers else None

    async def ensure_signer(self) -> None:
        """Load the ring; create a key if none this process can sign with exists."""
        await self.load()
        if self._signer is None:
            async with self.database.unit_of_work() as session:
                session.add(_new_key(self.secret))
            await self.load()

    async def rotate(self) -> str:
        """Retire every active key and create a new one; returns the new kid."""
        async with self.database.unit_of_work() as session:
            await session.execute(
                update(SigningKey)
                .where(SigningKey.retired_at.is_(None))
                .values(retired_at=self.clock.now())
            )
            key = _new_key(self.secret)
            session.add(key)
        await self.load()
        return key.kid

    def signer(self) -> tuple[str, Any]:
        if self._signer is None:
            raise RuntimeError("no signing key loaded")
        return self._signer.kid, self._signer.private

    def verification_key(self, kid: str) -> Any | None:
        key = self._keys.get(kid)
        if key is None:
            return None
        if key.retired_at is not None and key.retired_at + self.overlap <= self.clock.now():
            return None
        return key.public

    def jwks(self) -> dict[str, Any]:
        return {"keys": [key.jwk for key in self._keys.values() if self.verification_key(key.kid)]}

    async def _refresh(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.load()
            except Exception as exc:  # keep the keys we have; try again next time
                log.warning("signing_keys_reload_failed", error=type(exc).__name__)

    def start(self, interval: float) -> None:
        self._task = asyncio.create_task(self._refresh(interval), name="signing-keys-refresh")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
