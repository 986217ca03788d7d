"""Structured JSON logs (structlog) carrying the request id, and the middleware that sets it.

Every line is one JSON object on stderr. Standard-library loggers (uvicorn, SQLAlchemy)
go through the same renderer, so an aggregator sees one format.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import structlog
from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from apex.observability import tracing

REQUEST_ID_HEADER = "x-request-id"
TRACE_ID_HEADER = "x-trace-id"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

log = structlog.get_logger("apex.http")


_identity = {"service": "apex", "process": f"{socket.gethostname()}:{os.getpid()}"}


def add_process(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: which service and process wrote the line."""
    event.setdefault("service", _identity["service"])
    event.setdefault("process", _identity["process"])
    return event


SHARED: list[Any] = [
    structlog.contextvars.merge_contextvars,
    tracing.add_trace_ids,
    add_process,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    structlog.processors.StackInfoRenderer(),
]


def formatter(renderer: Any) -> logging.Formatter:
    """Lines from structlog and from stdlib loggers, through the same chain."""
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=SHARED,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )


def configure_logging(level: str = "INFO", fmt: str = "json", service: str = "apex") -> None:
    """Route structlog and stdlib logging through one renderer at `level`; every line says
    which `service` and process wrote it."""
    _identity["service"] = service
    _identity["process"] = f"{socket.gethostname()}:{os.getpid()}"
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[*SHARED, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(renderer))
    root = logging.getLogger()
    shippers = [h for h in root.handlers if getattr(h, "ships_logs", False)]
    root.handlers[:] = [handler, *shippers]
    logging.captureWarnings(True)  # library warnings become log records too, in the same format
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # One access line per request comes from RequestContextMiddleware, with the request id.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)


def _trace_headers(scope: Scope) -> dict[str, str]:
    """The caller's W3C trace context, if it sent one."""
    wanted = {b"traceparent", b"tracestate"}
    return {bytes(k).decode(): bytes(v).decode("latin-1")
            for k, v in scope.get("headers", []) if k in wanted}  # fmt: skip


def _incoming_request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == REQUEST_ID_HEADER.encode():
            candidate = bytes(value).decode("latin-1")
            if _VALID_REQUEST_ID.match(candidate):
                return candidate
    return uuid.uuid4().hex


class RequestContextMiddleware:
    """Give every HTTP request an id (the client's `X-Request-ID` if well-formed) and a
    server span (continuing the caller's W3C `traceparent`), bind them to the log context,
    echo both ids in the response (`X-Request-ID`, `X-Trace-Id`), log one line when the
    response is sent and hand status and latency to `on_response` (the metrics)."""

    def __init__(
        self, app: ASGIApp, on_response: Callable[[Scope, int, float], None] | None = None
    ) -> None:
        self.app = app
        self.on_response = on_response

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in {"http", "websocket"}:
            await self.app(scope, receive, send)
            return
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=_incoming_request_id(scope))
        if scope["type"] == "websocket":  # long-lived: each message gets its own span
            try:
                await self.app(scope, receive, send)
            finally:
                structlog.contextvars.clear_contextvars()
            return
        await self._http(scope, receive, send)
        # Cleared only on success: an unhandled error goes on to the outer error handler,
        # which answers the 500 with these ids (kit.errors).
        structlog.contextvars.clear_contextvars()

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = structlog.contextvars.get_contextvars()["request_id"]
        started = time.perf_counter()
        status = 500
        method = scope["method"]
        attributes = {"http.request.method": method, "url.path": scope["path"]}
        with tracing.span(
            method, kind=SpanKind.SERVER, parent=_trace_headers(scope), attributes=attributes
        ) as current:
            trace_id = tracing.current_trace_id() or ""
            structlog.contextvars.bind_contextvars(trace_id=trace_id or None)

            async def send_with_ids(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                    headers = list(message.get("headers", []))
                    headers.append((REQUEST_ID_HEADER.encode(), request_id.encode()))
                    headers.append((TRACE_ID_HEADER.encode(), trace_id.encode()))
                    message = {**message, "headers": headers}
                await send(message)

            try:
                await self.app(scope, receive, send_with_ids)
            finally:
                seconds = time.perf_counter() - started
                route = getattr(scope.get("route"), "path", None)
                current.update_name(f"{method} {route or 'unmatched'}")
                current.set_attribute("http.response.status_code", status)
                if route is not None:
                    current.set_attribute("http.route", route)
                if status >= 500:
                    current.set_status(Status(StatusCode.ERROR))
                log.info(
                    "request",
                    method=method,
                    path=scope["path"],  # never the query string: it may carry secrets
                    status=status,
                    duration_ms=round(seconds * 1000, 2),
                )
                if self.on_response is not None:
                    self.on_response(scope, status, seconds)
