"""The one error hierarchy of Apex (rendered by `apex.kit.error_handlers`).

Every error a client can see is an `ApexError`; the handlers render it as
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

from typing import Any

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
