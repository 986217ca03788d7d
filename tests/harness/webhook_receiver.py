"""A webhook receiver for tests: `python -m tests.harness.webhook_receiver --port N --dir D`.

POST /hooks/<name>: verifies `Apex-Signature: t=..,v1=..` itself (HMAC-SHA256 of "{t}.{body}"
with the secret in D/secret, written by the test), answers 200 when it holds and 400 when
not. POST /slack/<name>: a Slack-compatible incoming webhook, answers 200 "ok". Every request
is appended to D/received.jsonl, so what arrived survives a restart of the receiver.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import time
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

DIRECTORY = Path(".")


def signature_holds(header: str, body: bytes, secret: str) -> bool:
    fields = dict(item.split("=", 1) for item in header.split(",") if "=" in item)
    if "t" not in fields or "v1" not in fields:
        return False
    expected = hmac.new(secret.encode(), fields["t"].encode() + b"." + body, hashlib.sha256)
    return hmac.compare_digest(expected.hexdigest(), fields["v1"])


def _keep(request: Request, body: bytes, **extra: object) -> None:
    entry = {
        "path": request.url.path,
        "at": time.time(),
        "headers": {k.lower(): v for k, v in request.headers.items()},
        "body": json.loads(body or b"null"),
        **extra,
    }
    with (DIRECTORY / "received.jsonl").open("a") as log:
        log.write(json.dumps(entry) + "\n")


async def hook(request: Request) -> Response:
    body = await request.body()
    secret_file = DIRECTORY / "secret"
    secret = secret_file.read_text().strip() if secret_file.exists() else ""
    valid = bool(secret) and signature_holds(
        request.headers.get("apex-signature", ""), body, secret
    )
    _keep(request, body, signature_valid=valid)
    return JSONResponse({"received": True}, status_code=200 if valid else 400)


async def slack(request: Request) -> Response:
    _keep(request, await request.body())
    return PlainTextResponse("ok")


async def health(_: Request) -> Response:
    return JSONResponse({"ok": True})


app = Starlette(
    routes=[
        Route("/hooks/{name}", hook, methods=["POST"]),
        Route("/slack/{name}", slack, methods=["POST"]),
        Route("/_health", health),
    ]
)

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", type=Path, required=True)
    arguments = parser.parse_args()
    DIRECTORY = arguments.dir
    uvicorn.run(app, host="127.0.0.1", port=arguments.port, log_level="warning")
