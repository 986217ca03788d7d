"""OpenID Connect login (authorization code + PKCE S256), with Authlib as the OAuth client.

`begin()` stores state, nonce and the PKCE verifier in Redis under the state value, bound
to a random per-browser value kept in a short-lived cookie; `finish()` accepts the callback
only from that browser, only once, and only with a valid ID token: signature from the
provider's JWKS (RS256 only), `iss`, `aud` = our client id, `exp`, and our `nonce`.
"""

from __future__ import annotations

import hmac
import json
import secrets
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
from redis.asyncio import Redis

from apex.kit.digest import sha256_hex
from apex.kit.errors import NotFound, Unauthorized
from apex.settings import OidcProviderConfig

BINDING_COOKIE = "apex_oidc"
_STATE_TTL = 600


@dataclass(frozen=True, slots=True)
class Identity:
    email: str
    name: str | None
    subject: str


class OidcLogin:
    def __init__(
        self,
        providers: list[OidcProviderConfig],
        redis: Redis,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.providers = {p.name: p for p in providers}
        self.redis = redis
        self.transport = transport  # injectable, like every outside-world client
        self._metadata: dict[str, dict[str, Any]] = {}

    def provider(self, name: str) -> OidcProviderConfig:
        if name not in self.providers:
            raise NotFound("No such identity provider.")
        return self.providers[name]

    def _client(self, provider: OidcProviderConfig) -> Any:
        # Imported here: only instances with OIDC configured pay for it (and its import-time
        # deprecation warning then goes through the configured logging, as JSON).
        from authlib.integrations.httpx_client import AsyncOAuth2Client

        return AsyncOAuth2Client(
            client_id=provider.client_id,
            client_secret=provider.client_secret.get_secret_value(),
            scope=provider.scopes,
            redirect_uri=provider.redirect_uri,
            code_challenge_method="S256",
            transport=self.transport,
            timeout=10,
        )

    async def _discover(self, provider: OidcProviderConfig) -> dict[str, Any]:
        if provider.name not in self._metadata:
            async with httpx.AsyncClient(transport=self.transport, timeout=10) as http:
                response = await http.get(f"{provider.issuer}/.well-known/openid-configuration")
                response.raise_for_status()
                self._metadata[provider.name] = response.json()
        return self._metadata[provider.name]

    async def begin(self, name: str) -> tuple[str, str]:
        """The provider's authorization URL, and the browser binding to set as a cookie."""
        provider = self.provider(name)
        metadata = await self._discover(provider)
        state, nonce, verifier = (secrets.token_urlsafe(32) for _ in range(3))
        binding = secrets.token_urlsafe(32)
        async with self._client(provider) as client:
            url, _ = client.create_authorization_url(
                metadata["authorization_endpoint"], state=state, nonce=nonce, code_verifier=verifier
            )
        record = {
            "provider": name,
            "nonce": nonce,
            "verifier": verifier,
            "binding": sha256_hex(binding),
        }
        await self.redis.set(f"apex:oidc:{sha256_hex(state)}", json.dumps(record), ex=_STATE_TTL)
        return str(url), binding

    async def finish(self, name: str, *, code: str, state: str, binding: str | None) -> Identity:
        provider = self.provider(name)
        raw = await self.redis.getdel(f"apex:oidc:{sha256_hex(state)}")  # single use
        record = json.loads(raw) if raw else None
        if (
            record is None
            or record["provider"] != name
            or binding is None
            or not hmac.compare_digest(record["binding"], sha256_hex(binding))
        ):
            raise Unauthorized("This login was not started by this browser (state mismatch).")
        metadata = await self._discover(provider)
        try:
            async with self._client(provider) as client:
                token = await client.fetch_token(
                    metadata["token_endpoint"], code=code, code_verifier=record["verifier"]
                )
        except Exception as exc:  # the provider refused the code (reused, wrong redirect URI, ...)
            raise Unauthorized("The identity provider refused the login.") from exc
        return await self._verify(
            provider, metadata, str(token.get("id_token", "")), record["nonce"]
        )

    async def _verify(
        self, provider: OidcProviderConfig, metadata: dict[str, Any], id_token: str, nonce: str
    ) -> Identity:
        try:
            header = jwt.get_unverified_header(id_token)
            async with httpx.AsyncClient(transport=self.transport, timeout=10) as http:
                keys = (await http.get(metadata["jwks_uri"])).json()["keys"]
            jwk = next((k for k in keys if k.get("kid") == header.get("kid")), None)
            if jwk is None or header.get("alg") != "RS256":
                raise Unauthorized("The ID token is signed by an unknown key.")
            claims = jwt.decode(
                id_token,
                jwt.PyJWK(jwk).key,
                algorithms=["RS256"],
                audience=provider.client_id,
                issuer=metadata["issuer"],
                options={"require": ["exp", "iat", "sub", "aud", "iss"]},
            )
        except jwt.PyJWTError as exc:
            raise Unauthorized("The ID token is not valid for Apex.") from exc
        if not hmac.compare_digest(str(claims.get("nonce", "")), nonce):
            raise Unauthorized("The ID token does not answer this login (nonce mismatch).")
        if not claims.get("email") or claims.get("email_verified") is not True:
            raise Unauthorized("The identity provider did not vouch for an email address.")
        return Identity(
            email=str(claims["email"]).lower(), name=claims.get("name"), subject=str(claims["sub"])
        )
