"""The one error hierarchy of Apex, and the handler that renders it.

Every error a client can see is an `ApexError`; the handler renders it as
`{"error": "<ClassName>", "detail": "...", **extra}` with the class's status code.
Payload validation is the one exception: FastAPI's `RequestValidationError` is rendered
as a 422 `ValidationFailed` body that names each offending field.

    ApexError (500)
    ├── BadRequest (400)
    ├── Unauthorized (401)
    ├── Forbidden (403)
    ├── NotFound (404)
    ├── RequestTimeout (408: the body did not arrive in time)
    ├── Conflict (409)
    ├── PayloadTooLarge (413: refused before it is read)
    ├── UnsupportedMediaType (415)
    ├── ValidationFailed (422)
    ├── PaymentFailed (402)
    ├── RateLimited (429, Retry-After)
    ├── QuotaExceeded (429: a plan's quota (seats, records a month), with `limit`, `upgrade`)
    │   (an error naming an `upgrade` also carries `checkout`: where that plan is bought)
    └── ServiceUnavailable (503, Retry-After)

Raise these from services; never raise `HTTPException` below the endpoints. A Redis
connection failure that reaches the handler (where no fallback exists) is a 503 too.
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

log = structlog.get_logger(__name__)
# Every error that names a plan to upgrade to (`upgrade`) links here, where it is bought.
UPGRADE_CHECKOUT = "/api/v1/billing/checkout"


class ApexError(Exception):
    """Base of every error Apex reports to a client."""

    status_code = 500

    def __init__(self, detail: str, *, status_code: int | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        if status_code is not None:
            self.status_code = status_code
        self.extra = extra

    def headers(self) -> dict[str, str]:
        return {}

    def body(self) -> dict[str, Any]:
        body = {"error": type(self).__name__, "detail": self.detail, **self.extra}
        if self.extra.get("upgrade"):
            body.setdefault("checkout", UPGRADE_CHECKOUT)  # where the next plan is bought
        return body


class BadRequest(ApexError):
    status_code = 400


class Unauthorized(ApexError):
    status_code = 401

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class Forbidden(ApexError):
    status_code = 403


class NotFound(ApexError):
    status_code = 404


class RequestTimeout(ApexError):
    status_code = 408


class Conflict(ApexError):
    status_code = 409


class PayloadTooLarge(ApexError):
    status_code = 413


class UnsupportedMediaType(ApexError):
    status_code = 415


class PaymentFailed(ApexError):
    status_code = 402


class ValidationFailed(ApexError):
    """A domain rule rejected the input; `errors` lists `{"field", "message"}` items."""

    status_code = 422

    def __init__(self, detail: str, *, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(detail, errors=errors or [])


class _RetryAfter(ApexError):
    def __init__(self, detail: str, *, retry_after: float, **extra: Any) -> None:
        super().__init__(detail, retry_after=retry_after, **extra)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, round(self.retry_after)))}


class RateLimited(_RetryAfter):
    status_code = 429


class ServiceUnavailable(_RetryAfter):
    status_code = 503


class QuotaExceeded(ApexError):
    """A plan's quota is used up: waiting does not help (no Retry-After), upgrading does."""

    status_code = 429


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
