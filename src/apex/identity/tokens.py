"""Access tokens: short-lived RS256 JWTs naming the user and the organisation they act for.

Validation is strict and fails closed, every failure being a 401:
- the header must say `alg: RS256`, carry a known `kid` (plain characters only), and no
  `jku`, `x5u`, `x5c` or `jwk` (keys never come from the token);
- the signature must verify with that key (the algorithm list is pinned: no `none`, no HS256
  with the public key as secret);
- `iss`, `aud` and `typ` must be Apex's, `exp` and `nbf` hold within the leeway, measured
  on the injected clock; `jti` must not be on the logout denylist (checked by the caller).
"""

from __future__ import annotations

import re
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt

from apex.identity.keys import KeyRing
from apex.kit.errors import Unauthorized

ISSUER = "apex"
AUDIENCE = "apex-api"
ALGORITHM = "RS256"
TOKEN_TYPE = "access"  # noqa: S105 (a claim value, not a secret)
_KID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_FORBIDDEN_HEADERS = ("jku", "x5u", "x5c", "jwk")


@dataclass(frozen=True, slots=True)
class AccessClaims:
    user_id: uuid.UUID
    organization_id: uuid.UUID
    token_id: str
    family_id: str | None
    expires_at: datetime


def issue_access_token(
    keyring: KeyRing,
    *,
    user_id: uuid.UUID,
    organization_id: uuid.UUID,
    family_id: uuid.UUID | None,
    now: datetime,
    ttl_seconds: int,
    token_id: str | None = None,
) -> str:
    """A signed access token; `token_id` (its `jti`) is random unless the caller must know
    it, to remember or revoke the token later."""
    kid, private_key = keyring.signer()
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "typ": TOKEN_TYPE,
        "sub": str(user_id),
        "org": str(organization_id),
        "jti": token_id or uuid.uuid4().hex,
        "iat": int(now.timestamp()),
        "nbf": int(now.timestamp()),
        "exp": int((now + timedelta(seconds=ttl_seconds)).timestamp()),
    }
    if family_id is not None:
        claims["fam"] = str(family_id)
    return jwt.encode(
        claims, private_key, algorithm=ALGORITHM, headers={"kid": kid, "typ": "at+jwt"}
    )


def _key_for(token: str, keyring: KeyRing) -> Any:
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise Unauthorized("Malformed access token.") from exc
    if header.get("alg") != ALGORITHM or any(name in header for name in _FORBIDDEN_HEADERS):
        raise Unauthorized("Access token header not accepted.")
    kid = header.get("kid")
    key = keyring.verification_key(kid) if isinstance(kid, str) and _KID.match(kid) else None
    if key is None:
        raise Unauthorized("Access token signed by an unknown key.")
    return key


class _VerifiedTokens:
    """Claims of tokens whose signature was verified, by the exact token text, with the key
    that verified them: a token seen again skips the RSA check and the base64 work (most of
    the cost of authenticating a request) while that same key is still in the keyring.
    Expiry and the denylist are still checked on every request. Bounded (LRU)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.entries: OrderedDict[str, tuple[Any, dict[str, Any]]] = OrderedDict()

    def get(self, token: str, keyring: KeyRing) -> dict[str, Any] | None:
        found = self.entries.get(token)
        if found is None:
            return None
        key, claims = found
        if keyring.verification_key(str(claims["_kid"])) is not key:  # retired, or another ring
            del self.entries[token]
            return None
        self.entries.move_to_end(token)
        return claims

    def put(self, token: str, key: Any, claims: dict[str, Any]) -> None:
        self.entries[token] = (key, claims)
        if len(self.entries) > self.size:
            self.entries.popitem(last=False)


_VERIFIED = _VerifiedTokens(10_000)


def decode_access_token(
    token: str, *, keyring: KeyRing, now: datetime, leeway: int
) -> AccessClaims:
    claims = _VERIFIED.get(token, keyring)
    if claims is None:
        claims = _verified_claims(token, keyring)
    return _checked(claims, now, leeway)


def _verified_claims(token: str, keyring: KeyRing) -> dict[str, Any]:
    key = _key_for(token, keyring)
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            audience=AUDIENCE,
            issuer=ISSUER,
            options={
                "require": ["exp", "nbf", "iat", "sub", "jti", "iss", "aud"],
                "verify_exp": False,  # checked below against the injected clock
                "verify_nbf": False,
                "verify_iat": False,
            },
        )
    except jwt.PyJWTError as exc:
        raise Unauthorized("Invalid access token.") from exc
    if claims.get("typ") != TOKEN_TYPE:
        raise Unauthorized("Not an access token.")
    claims["_kid"] = jwt.get_unverified_header(token)["kid"]
    _VERIFIED.put(token, key, claims)
    return claims


def _checked(claims: dict[str, Any], now: datetime, leeway: int) -> AccessClaims:
    stamp = now.timestamp()
    if _instant(claims, "exp") + leeway < stamp:
        raise Unauthorized("The access token has expired.")
    if _instant(claims, "nbf") - leeway > stamp:
        raise Unauthorized("The access token is not valid yet.")
    try:
        return AccessClaims(
            user_id=uuid.UUID(claims["sub"]),
            organization_id=uuid.UUID(claims["org"]),
            token_id=str(claims["jti"]),
            family_id=claims.get("fam"),
            expires_at=datetime.fromtimestamp(claims["exp"], UTC),
        )
    except (KeyError, ValueError, TypeError, OverflowError, OSError) as exc:
        raise Unauthorized("Invalid access token.") from exc


_LATEST_INSTANT = 253402300799  # 9999-12-31T23:59:59Z: later cannot be a datetime


def _instant(claims: dict[str, Any], name: str) -> int:
    """A NumericDate claim as whole seconds; anything else (a string, a boolean, 1e20) makes
    the token invalid, never a server error."""
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Unauthorized("Invalid access token.")
    if not 0 <= value <= _LATEST_INSTANT:
        raise Unauthorized("Invalid access token.")
    return int(value)
