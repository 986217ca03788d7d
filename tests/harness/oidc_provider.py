"""A local OpenID Connect provider: a real HTTP server speaking the real protocol.

Discovery, authorize (auto-consent for the scripted user), token (authorization code with
PKCE S256, single-use codes, exact redirect URI match, client secret), JWKS, RS256 ID
tokens. `POST /_script` changes its behaviour for the next ID tokens (wrong `aud`, other
`nonce`, unknown signing key); `GET /_requests` lists what it received.

Run: python -m tests.harness.oidc_provider --port PORT --client-id ID --client-secret S
         --redirect-uri URI
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import secrets
import time
from typing import Any
from urllib.parse import parse_qsl, urlencode

import jwt
import uvicorn
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route


def build(issuer: str, client_id: str, client_secret: str, redirect_uri: str) -> Starlette:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rogue = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key())) | {
        "kid": "op-1",
        "use": "sig",
        "alg": "RS256",
    }
    codes: dict[str, dict[str, Any]] = {}
    script: dict[str, Any] = {"email": "oidc-user@example.test", "name": "OIDC User"}
    requests_seen: list[dict[str, Any]] = []

    def error(code: str, status: int = 400) -> JSONResponse:
        return JSONResponse({"error": code}, status_code=status)

    async def discovery(_: Request) -> JSONResponse:
        return JSONResponse(
            {
                "issuer": issuer,
                "authorization_endpoint": f"{issuer}/authorize",
                "token_endpoint": f"{issuer}/token",
                "jwks_uri": f"{issuer}/jwks",
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "code_challenge_methods_supported": ["S256"],
            }
        )

    async def jwks(_: Request) -> JSONResponse:
        return JSONResponse({"keys": [jwk]})

    async def authorize(request: Request) -> Response:
        q = request.query_params
        requests_seen.append({"endpoint": "authorize", **dict(q)})
        if q.get("client_id") != client_id or q.get("redirect_uri") != redirect_uri:
            return error("invalid_request")  # never redirect to an unregistered URI
        if q.get("response_type") != "code" or q.get("code_challenge_method") != "S256":
            return error("invalid_request")
        code = secrets.token_urlsafe(24)
        codes[code] = {
            "nonce": q.get("nonce"),
            "challenge": q.get("code_challenge"),
            "redirect_uri": q.get("redirect_uri"),
            "used": False,
        }
        return RedirectResponse(
            f"{redirect_uri}?{urlencode({'code': code, 'state': q.get('state', '')})}", 302
        )

    async def token(request: Request) -> Response:
        form = dict(parse_qsl((await request.body()).decode()))
        requests_seen.append(
            {"endpoint": "token", **{k: v for k, v in form.items() if k != "client_secret"}}
        )
        basic = request.headers.get("authorization", "")
        if basic.startswith("Basic "):
            given_id, _, given_secret = base64.b64decode(basic[6:]).decode().partition(":")
        else:
            given_id, given_secret = str(form.get("client_id")), str(form.get("client_secret"))
        if given_id != client_id or given_secret != client_secret:
            return error("invalid_client", 401)
        grant = codes.get(str(form.get("code")))
        if grant is None or grant["used"]:
            return error("invalid_grant")
        grant["used"] = True  # single use, even when this exchange fails below
        if form.get("redirect_uri") != grant["redirect_uri"]:
            return error("invalid_grant")
        verifier = str(form.get("code_verifier", ""))
        challenge = (
            base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
            .rstrip(b"=")
            .decode()
        )
        if challenge != grant["challenge"]:
            return error("invalid_grant")
        now = int(time.time())
        claims = {
            "iss": issuer,
            "sub": hashlib.sha256(script["email"].encode()).hexdigest()[:20],
            "aud": script.get("aud", client_id),
            "email": script["email"],
            "email_verified": True,
            "name": script["name"],
            "nonce": script.get("nonce", grant["nonce"]),
            "iat": now,
            "exp": now + 300,
        }
        signer, kid = (rogue, "op-rogue") if script.get("unknown_key") else (key, "op-1")
        id_token = jwt.encode(claims, signer, algorithm="RS256", headers={"kid": kid})
        return JSONResponse(
            {
                "access_token": secrets.token_urlsafe(16),
                "token_type": "Bearer",
                "expires_in": 300,
                "id_token": id_token,
            }
        )

    async def set_script(request: Request) -> JSONResponse:
        body = await request.json()
        script.clear()
        script.update({"email": "oidc-user@example.test", "name": "OIDC User", **body})
        return JSONResponse(script)

    async def seen(_: Request) -> JSONResponse:
        return JSONResponse(requests_seen)

    return Starlette(
        routes=[
            Route("/.well-known/openid-configuration", discovery),
            Route("/jwks", jwks),
            Route("/authorize", authorize),
            Route("/token", token, methods=["POST"]),
            Route("/_script", set_script, methods=["POST"]),
            Route("/_requests", seen),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--client-secret", required=True)
    parser.add_argument("--redirect-uri", required=True)
    args = parser.parse_args()
    issuer = f"http://127.0.0.1:{args.port}"
    app = build(issuer, args.client_id, args.client_secret, args.redirect_uri)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
