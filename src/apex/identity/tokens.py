"""Access tokens: short-lived JWTs naming the user and the organisation they act for.

Validation pins the algorithm, issuer, audience and `typ`, and allows 30 s of clock skew.
(Asymmetric keys with JWKS and rotation replace the shared secret in the identity issue.)
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import jwt

from apex.kit.errors import Unauthorized

ISSUER = "apex"
AUDIENCE = "apex-api"
ALGORITHM = "HS256"
LEEWAY_SECONDS = 30


@dataclass(frozen=True, slots=True)
class AccessClaims:
    user_id: uuid.UUID
    organization_id: uuid.UUID
    token_id: str
    expires_at: datetime


def issue_access_token(
    *, secret: str, user_id: uuid.UUID, organization_id: uuid.UUID, now: datetime, ttl_seconds: int
) -> str:
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "typ": "access",
        "sub": str(user_id),
        "org": str(organization_id),
        "jti": uuid.uuid4().hex,
        "iat": now,
        "nbf": now,
        "exp": now + timedelta(seconds=ttl_seconds),
    }
    return jwt.encode(claims, secret, algorithm=ALGORITHM, headers={"typ": "JWT"})


def decode_access_token(token: str, *, secret: str, now: datetime) -> AccessClaims:
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            audience=AUDIENCE,
            issuer=ISSUER,
            leeway=LEEWAY_SECONDS,
            options={
                "require": ["exp", "nbf", "iat", "sub", "jti", "iss", "aud"],
                "verify_iat": False,
            },
        )
        if claims.get("typ") != "access":
            raise Unauthorized("Not an access token.")
        expires_at = datetime.fromtimestamp(claims["exp"], now.tzinfo)
        if expires_at + timedelta(seconds=LEEWAY_SECONDS) < now:
            raise Unauthorized("The access token has expired.")
        return AccessClaims(
            user_id=uuid.UUID(claims["sub"]),
            organization_id=uuid.UUID(claims["org"]),
            token_id=claims["jti"],
            expires_at=expires_at,
        )
    except (jwt.PyJWTError, KeyError, ValueError) as exc:
        raise Unauthorized("Invalid access token.") from exc
