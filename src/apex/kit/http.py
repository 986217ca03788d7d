"""What every HTTP request meets before the application: security headers on every answer,
and limits on what a client controls — body size (from `Content-Length`, then while the
body streams in), the time the body may take, and its content type. Pure ASGI, so nothing
is buffered beyond the limit and nothing reaches a route that breaks them.

A production deployment puts nginx in front with the same limits (`deploy/nginx.conf`),
which also bounds the time a client may take to send its headers.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from apex.kit.errors import (
    ApexError,
    BadRequest,
    PayloadTooLarge,
    RequestTimeout,
    UnsupportedMediaType,
)

MIB = 1024 * 1024
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

# The Content-Security-Policy of API answers and /docs (whose assets are served by Apex
# itself, see apex.web.docs): nothing from anywhere else, no inline script, no framing.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = tuple(
    (name.encode(), value.encode())
    for name, value in {
        "strict-transport-security": "max-age=63072000; includeSubDomains",
        "x-content-type-options": "nosniff",
        "x-frame-options": "DENY",
        "referrer-policy": "no-referrer",
        "content-security-policy": CSP,
        "cross-origin-opener-policy": "same-origin",
        "cross-origin-resource-policy": "same-origin",
        "permissions-policy": "camera=(), microphone=(), geolocation=(), payment=()",
    }.items()
)


class _TooLarge(Exception):
    pass


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


class RequestLimits:
    """Security headers on every response; body limits, a body read deadline and JSON-only
    bodies on every request. `limits` maps a path to its own body limit (bytes)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        default_limit: int,
        limits: Mapping[str, int],
        read_timeout: float,
        streamed: Mapping[str, int] | None = None,
    ) -> None:
        self.app = app
        self.default_limit = default_limit
        self.limits = dict(limits)
        self.read_timeout = read_timeout
        # Paths whose NDJSON body the route reads as a stream: limited in size, and each
        # chunk must arrive within the read timeout (a large upload may take long in all).
        self.streamed = dict(streamed or {})

    def limit_for(self, path: str) -> int:
        return self.limits.get(path.rstrip("/") or "/", self.default_limit)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = _with_security_headers(send, scope)
        headers = Headers(scope=scope)
        streamed = self.streamed.get(scope["path"].rstrip("/"))
        if streamed is not None:
            try:
                _check_stream(headers, streamed)
            except ApexError as refused:
                await _refuse(send, refused)
                return
            await self.app(scope, _limited(receive, streamed, self.read_timeout), send)
            return
        try:
            body = await self._checked_body(scope, headers, receive)
        except ApexError as refused:
            await _refuse(send, refused)
            return
        if body is None:
            await self.app(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)

    async def _checked_body(self, scope: Scope, headers: Headers, receive: Receive) -> bytes | None:
        """The request's body, read within the limits; None when it has none."""
        length = headers.get("content-length")
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        if length is None and not chunked:
            return None
        limit = self.limit_for(scope["path"])
        if length is not None:
            if not length.isdigit():
                raise BadRequest("Content-Length must be a whole number of bytes.")
            if int(length) > limit:
                raise PayloadTooLarge(_too_large(limit), limit_bytes=limit)
            if int(length) == 0:
                return None
        if scope["method"] in BODY_METHODS and not _is_json(headers.get("content-type")):
            raise UnsupportedMediaType(
                "Send the body as JSON with 'Content-Type: application/json'."
            )
        try:
            async with asyncio.timeout(self.read_timeout):
                return await _read(receive, limit)
        except _TooLarge:
            raise PayloadTooLarge(_too_large(limit), limit_bytes=limit) from None
        except TimeoutError:
            raise RequestTimeout(
                f"The request body did not arrive within {self.read_timeout:g} s."
            ) from None


NDJSON_TYPES = frozenset({"application/x-ndjson", "application/jsonl", "application/json-seq"})


def _check_stream(headers: Headers, limit: int) -> None:
    length = headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise PayloadTooLarge(_too_large(limit), limit_bytes=limit)
    media = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media not in NDJSON_TYPES:
        raise UnsupportedMediaType(
            "Send one JSON record per line with 'Content-Type: application/x-ndjson' "
            "(and 'Content-Encoding: gzip' to compress it)."
        )


def _limited(receive: Receive, limit: int, idle_timeout: float) -> Receive:
    """`receive` for a streamed body: PayloadTooLarge past `limit` bytes, RequestTimeout
    when a chunk takes longer than `idle_timeout` seconds to arrive."""
    size = 0

    async def limited() -> Message:
        nonlocal size
        try:
            async with asyncio.timeout(idle_timeout):
                message = await receive()
        except TimeoutError:
            raise RequestTimeout(
                f"No part of the request body arrived within {idle_timeout:g} s."
            ) from None
        size += len(message.get("body", b""))
        if size > limit:
            raise PayloadTooLarge(_too_large(limit), limit_bytes=limit)
        return message

    return limited


def _too_large(limit: int) -> str:
    return f"The request body is larger than this endpoint accepts ({limit:,} bytes)."


async def _read(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # then: http.disconnect when the client goes

    return replay


def _with_security_headers(send: Send, scope: Scope) -> Send:
    """Adds the security headers, and any a route left in `request.state.response_headers`
    (e.g. RateLimit, which must reach error answers too)."""

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            present = {name.lower() for name, _ in message.get("headers", [])}
            extra = [(n, v) for n, v in SECURITY_HEADERS if n not in present]
            state = scope.get("state") or {}
            for name, value in (state.get("response_headers") or {}).items():
                if name.lower().encode() not in present:
                    extra.append((name.lower().encode(), value.encode()))
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    return wrapped


async def _refuse(send: Send, error: ApexError) -> None:
    """Answer without reading the rest of the body, and close the connection."""
    body = json.dumps(error.body()).encode()
    headers: list[tuple[bytes, bytes]] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        *((k.lower().encode(), v.encode()) for k, v in error.headers().items()),
    ]
    await send({"type": "http.response.start", "status": error.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def document_limits(schema: dict[str, Any], default_limit: int, limits: Mapping[str, int]) -> None:
    """State each operation's body limit in the OpenAPI document (`x-body-limit-bytes`, and
    the 413 it answers)."""
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            if method.upper() not in BODY_METHODS or "requestBody" not in operation:
                continue
            limit = limits.get(path, default_limit)
            operation["x-body-limit-bytes"] = limit
            operation.setdefault("responses", {})["413"] = {
                "description": f"The body is larger than {limit:,} bytes."
            }
            operation["responses"].setdefault(
                "415", {"description": "The body is not JSON (Content-Type: application/json)."}
            )
