"""How `apex.kit.errors` reaches a client: the exception handlers of the app, each rendering
the documented body (`{"error", "detail", **extra}` plus the request's ids).

Kept apart from the hierarchy so that the services and the CLI raise errors without
importing the web framework.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from apex.kit.errors import ApexError, ServiceUnavailable

log = structlog.get_logger(__name__)

_STATUS_NAMES = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    413: "PayloadTooLarge",
    415: "UnsupportedMediaType",
    429: "RateLimited",
    503: "ServiceUnavailable",
}


def _field_path(loc: tuple[int | str, ...]) -> str:
    """`("body", "items", 2, "name")` → `items[2].name` (the part a client wrote)."""
    if not loc:
        return "body"
    sources = {"body", "query", "path", "header", "cookie"}
    parts = list(loc[1:]) if loc[0] in sources and len(loc) > 1 else list(loc)
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def request_ids() -> dict[str, str]:
    """The request's ids still bound to the log context (`request_id`, `trace_id`): every
    error body carries them so that a report can be found in the logs and traces."""
    bound = structlog.contextvars.get_contextvars()
    return {name: str(bound[name]) for name in ("request_id", "trace_id") if bound.get(name)}


def _error_json(
    body: dict[str, Any], status_code: int, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({**body, **request_ids()}, status_code=status_code, headers=headers)


def error_response(exc: ApexError) -> JSONResponse:
    """The documented error body, for the rare endpoint that must answer an error without
    raising (so that its transaction still commits)."""
    return _error_json(exc.body(), exc.status_code, exc.headers())


async def _apex_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApexError)
    if exc.status_code >= 500:
        log.warning("apex_error", error=type(exc).__name__, detail=exc.detail)
    return error_response(exc)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"field": _field_path(tuple(e["loc"])), "message": e["msg"], "type": e["type"]}
        for e in exc.errors()
    ]
    fields = ", ".join(sorted({e["field"] for e in errors}))
    body = {"error": "ValidationFailed", "detail": f"Invalid request: {fields}", "errors": errors}
    return _error_json(body, 422)


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    name = _STATUS_NAMES.get(exc.status_code, "HTTPError")
    return _error_json(
        {"error": name, "detail": str(exc.detail)}, exc.status_code, getattr(exc, "headers", None)
    )


async def _redis_unavailable(_: Request, exc: Exception) -> JSONResponse:
    """Redis down where no fallback exists (sessions, logout): a 503 to retry, not a 500."""
    log.warning("redis_unavailable", error=type(exc).__name__)
    return error_response(
        ServiceUnavailable("A shared store is unreachable; try again shortly.", retry_after=2)
    )


async def _unhandled_error(_: Request, exc: Exception) -> JSONResponse:
    """The outermost handler (outside the request middleware): the request's ids, still
    bound to the log context, go in the body and headers so a report can be found."""
    log.exception("unhandled_error", error=type(exc).__name__)
    headers = {f"x-{name.replace('_', '-')}": value for name, value in request_ids().items()}
    body = {"error": "InternalError", "detail": "An unexpected error occurred; it has been logged."}
    return _error_json(body, 500, headers)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApexError, _apex_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RedisConnectionError, _redis_unavailable)
    app.add_exception_handler(RedisTimeoutError, _redis_unavailable)
    app.add_exception_handler(Exception, _unhandled_error)
