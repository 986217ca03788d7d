"""The payment gateway: one interface, whose production implementation is the `stripe` SDK.

Apex keeps subscriptions and invoices itself and asks the gateway for three things: a
customer per organisation, a hosted Checkout page that saves a card (mode `setup`), and
off-session charges (PaymentIntents confirmed at once) that each carry an idempotency key.
Tests point the SDK, through its own base-address setting, at a real HTTP server speaking
the same subset of Stripe's API (`tests/harness/payments_server.py`).

Errors: a refused card is an answer (`Charge.status == "failed"` with the bank's code), not
an exception; a gateway that cannot be reached, or whose answer was lost, raises
`GatewayUnavailable`: the charge may or may not have happened, so the caller retries with
the same key.
"""

from __future__ import annotations

import hmac
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from apex.kit.digest import sha256_hex
from apex.kit.errors import ServiceUnavailable
from apex.kit.signatures import hmac_hex
from apex.settings import Settings

if TYPE_CHECKING:
    import stripe

log = structlog.get_logger(__name__)


class GatewayUnavailable(ServiceUnavailable):
    """The payment gateway did not answer (or its answer was lost): retry with the same key."""


@dataclass(frozen=True, slots=True)
class CheckoutSession:
    id: str
    url: str


@dataclass(frozen=True, slots=True)
class Charge:
    id: str | None
    status: str  # succeeded | failed | requires_action
    failure_code: str | None = None
    message: str | None = None


def metadata_for(organization_id: uuid.UUID, invoice_id: uuid.UUID, key: str) -> dict[str, str]:
    """What every charge and refund carries at the gateway: whose, for which invoice, and
    the idempotency key (so the gateway's dashboard leads back to Apex's rows)."""
    return {"organization_id": str(organization_id), "invoice_id": str(invoice_id),
            "idempotency_key": key}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Refunded:
    id: str | None
    status: str  # succeeded | failed (pending at the gateway counts as succeeded: it was accepted)
    failure_code: str | None = None


class PaymentGateway(Protocol):
    async def customer(self, organization_id: str, email: str, name: str) -> str: ...

    async def checkout(
        self, customer_id: str, *, success_url: str, cancel_url: str, metadata: dict[str, str]
    ) -> CheckoutSession: ...

    async def charge(
        self,
        customer_id: str,
        amount_cents: int,
        currency: str,
        *,
        idempotency_key: str,
        metadata: dict[str, str],
    ) -> Charge: ...

    async def refund(
        self, payment_id: str, amount_cents: int, *, idempotency_key: str, metadata: dict[str, str]
    ) -> Refunded: ...


class StripeGateway:
    """`PaymentGateway` over the `stripe` SDK (async, httpx)."""

    def __init__(
        self, api_key: str, *, api_base: str | None, timeout: float, network_retries: int
    ) -> None:
        import stripe  # here, not at import time: 0.8 s an installation without payments skips

        base = {"api": api_base} if api_base else {}
        self.client = stripe.StripeClient(
            api_key,
            base_addresses=base,  # type: ignore[arg-type]
            http_client=stripe.HTTPXClient(timeout=timeout),
            max_network_retries=network_retries,
        )

    async def customer(self, organization_id: str, email: str, name: str) -> str:
        import stripe

        # A retry of this very request creates no second customer; a later one (the owner or
        # the name changed) is a new request, and the gateway refuses a reused key for it.
        key = f"apex-customer-{organization_id}-{sha256_hex(f'{email}|{name}')[:16]}"
        try:
            created = await self.client.v1.customers.create_async(
                {"email": email, "name": name, "metadata": {"organization_id": organization_id}},
                {"idempotency_key": key},
            )
        except stripe.StripeError as exc:
            raise _unavailable(exc) from exc
        return str(created.id)

    async def checkout(
        self, customer_id: str, *, success_url: str, cancel_url: str, metadata: dict[str, str]
    ) -> CheckoutSession:
        import stripe

        try:
            session = await self.client.v1.checkout.sessions.create_async(
                {
                    "mode": "setup",
                    "customer": customer_id,
                    "currency": "usd",
                    "payment_method_types": ["card"],
                    "success_url": success_url,
                    "cancel_url": cancel_url,
                    "metadata": metadata,
                }
            )
        except stripe.StripeError as exc:
            raise _unavailable(exc) from exc
        return CheckoutSession(id=str(session.id), url=str(session.url))

    async def charge(
        self,
        customer_id: str,
        amount_cents: int,
        currency: str,
        *,
        idempotency_key: str,
        metadata: dict[str, str],
    ) -> Charge:
        import stripe

        try:
            customer = await self.client.v1.customers.retrieve_async(customer_id)
            method = (customer.get("invoice_settings") or {}).get("default_payment_method")
            if not method:
                return Charge(None, "failed", "no_payment_method", "No card on file.")
            intent = await self.client.v1.payment_intents.create_async(
                {
                    "amount": amount_cents,
                    "currency": currency,
                    "customer": customer_id,
                    "payment_method": method,
                    "confirm": True,
                    "off_session": True,
                    "metadata": metadata,
                },
                {"idempotency_key": idempotency_key},
            )
        except stripe.CardError as exc:
            return _refused(exc)
        except stripe.StripeError as exc:
            raise _unavailable(exc) from exc
        status = "requires_action" if intent.status == "requires_action" else intent.status
        if status not in {"succeeded", "requires_action"}:
            return Charge(intent.id, "failed", intent.status, None)
        return Charge(intent.id, status)

    async def refund(
        self, payment_id: str, amount_cents: int, *, idempotency_key: str, metadata: dict[str, str]
    ) -> Refunded:
        import stripe

        try:
            refund = await self.client.v1.refunds.create_async(
                {"payment_intent": payment_id, "amount": amount_cents, "metadata": metadata},
                {"idempotency_key": idempotency_key},
            )
        except stripe.InvalidRequestError as exc:  # refused (already refunded, too much)
            return Refunded(None, "failed", exc.code or "invalid_request")
        except stripe.StripeError as exc:
            raise _unavailable(exc) from exc
        failed = refund.status in ("failed", "canceled")
        # Stripe sends failure_reason only on a failed refund: read it as a mapping key.
        reason = refund.get("failure_reason")
        return Refunded(str(refund.id), "failed" if failed else "succeeded", reason)


def _refused(exc: stripe.CardError) -> Charge:
    error: Any = exc.error
    intent = getattr(error, "payment_intent", None) if error else None
    intent_id = intent.get("id") if intent else None
    code = (getattr(error, "decline_code", None) or exc.code) if error else exc.code
    if exc.code == "authentication_required":
        return Charge(intent_id, "requires_action", "authentication_required", exc.user_message)
    return Charge(intent_id, "failed", code or "card_declined", exc.user_message)


def _unavailable(exc: stripe.StripeError) -> GatewayUnavailable:
    """No answer, or one Apex cannot act on (a rejected key, a refused request): logged for
    the operator, and to the caller a 503 that loses nothing."""
    log.error("payment_gateway_error", error=type(exc).__name__, status=exc.http_status,
              code=exc.code, request_id=exc.request_id)  # fmt: skip
    return GatewayUnavailable(
        "The payment gateway did not answer; nothing is lost, try again shortly.", retry_after=30
    )


SIGNATURE_TOLERANCE_SECONDS = 300


class BadSignature(ValueError):
    pass


def verify_signature(
    payload: bytes,
    header: str,
    secret: str,
    now: datetime,
    tolerance: int = SIGNATURE_TOLERANCE_SECONDS,
) -> None:
    """Check a `Stripe-Signature: t=..,v1=..` header the way Stripe documents it: HMAC-SHA256
    of `{t}.{payload}` with the endpoint's secret, compared in constant time, and `t`
    within `tolerance` seconds of now (either way) so a captured request cannot be replayed.
    Apex checks it itself, rather than with the SDK's helper, to take "now" from its clock."""
    parts = [item.split("=", 1) for item in header.split(",") if "=" in item]
    timestamps = [value for key, value in parts if key.strip() == "t"]
    signatures = [value.strip() for key, value in parts if key.strip() == "v1"]
    if len(timestamps) != 1 or not signatures or not timestamps[0].strip().isdigit():
        raise BadSignature("The signature header is malformed.")
    signed_at = int(timestamps[0])
    expected = hmac_hex(secret, signed_at, payload)
    if not any(hmac.compare_digest(expected, candidate) for candidate in signatures):
        raise BadSignature("The signature does not match the body.")
    if abs(now.timestamp() - signed_at) > tolerance:
        raise BadSignature("The signature is too old or from the future.")


def build_gateway(settings: Settings) -> StripeGateway | None:
    """The gateway the settings configure, or None (no payments on this installation)."""
    if settings.stripe_api_key is None:
        return None
    return StripeGateway(
        settings.stripe_api_key.get_secret_value(),
        api_base=settings.stripe_api_base,
        timeout=settings.stripe_timeout_seconds,
        network_retries=settings.stripe_network_retries,
    )
