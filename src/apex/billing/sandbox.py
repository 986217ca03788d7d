"""A local payment gateway: a real HTTP server speaking the subset of Stripe's REST API that
Apex's production client (the `stripe` SDK) uses. The tests run it as a server of its own
(tests/harness/payments_server.py), so they exercise that client for real; the embedded
default serves it under /sandbox/payments as its demo checkout (`with_sandbox`), never in
production. It holds everything in memory: it is a rehearsal, not a ledger.

API (form-encoded bodies, Bearer secret key, Stripe's object and error shapes):
  POST /v1/customers, GET /v1/customers/{id}
  POST /v1/checkout/sessions (mode setup), GET /v1/checkout/sessions/{id}
  POST /v1/payment_intents (confirm=true, off_session), GET /v1/payment_intents/{id}
  POST /v1/refunds
Every POST honours `Idempotency-Key` as Stripe does: the same key with the same parameters
replays the first answer (`Idempotent-Replayed: true`); with other parameters it is a 400
`idempotency_error`.

The hosted Checkout page (`GET/POST /pay/{session}`) takes a card number; Stripe's test
numbers behave as documented: 4242424242424242 succeeds, 4000000000000002 is declined
(generic_decline), 4000000000009995 has insufficient funds, 4000002760003184 always needs
3-D Secure (off-session: `authentication_required`).

Webhooks: each event is POSTed to the configured endpoint, signed `Stripe-Signature:
t=..,v1=..` (HMAC-SHA256 of `t.body`), retried until a 2xx (at least once); `/_script` can
make it deliver copies and shuffle the order.

Test controls: POST /_configure {webhook_url, webhook_secret, api_key}; POST /_script
{delay_after_charge / delay_after_refund: s (the next charge or refund is made, then answered
late), copies: n,
shuffle: bool}; POST /_customers/{id}/card {number} (the customer changes their card on the
gateway's page); POST /_intents/{id}/authenticate (the cardholder passes 3-D Secure);
GET /_ledger (every charge made); GET /_events; GET /_requests.

Run: python -m tests.harness.payments_server --port PORT
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import random
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qsl

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from apex.settings import SANDBOX_API_KEY, SANDBOX_PATH

CARDS = {
    "4242424242424242": None,
    "4000000000000002": ("card_declined", "generic_decline", "Your card was declined."),
    "4000000000009995": (
        "card_declined",
        "insufficient_funds",
        "Your card has insufficient funds.",
    ),
    "4000002760003184": (
        "authentication_required",
        "authentication_required",
        "Your card was declined. This transaction requires authentication.",
    ),
}


def parse_form(body: bytes) -> dict[str, Any]:
    """Stripe's form encoding: `a[b]=1`, `a[0]=x` into nested dicts and lists."""
    result: dict[str, Any] = {}
    for key, value in parse_qsl(body.decode(), keep_blank_values=True):
        parts = key.replace("]", "").split("[")
        node = result
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return {key: _lists(value) for key, value in result.items()}


def _lists(value: Any) -> Any:
    if isinstance(value, dict):
        if value and all(key.isdigit() for key in value):
            return [_lists(value[key]) for key in sorted(value, key=int)]
        return {key: _lists(item) for key, item in value.items()}
    return value


def stripe_error(status: int, kind: str, message: str, **fields: Any) -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "message": message, **fields}}, status)


class Gateway:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.api_key = "sk_test_apex"
        self.webhook_url: str | None = None
        self.webhook_secret = "whsec_test"  # noqa: S105 (the sandbox's default, not a secret)
        self.customers: dict[str, dict[str, Any]] = {}
        self.sessions: dict[str, dict[str, Any]] = {}
        self.intents: dict[str, dict[str, Any]] = {}
        self.methods: dict[str, str] = {}  # payment method id → card number
        self.refunds: dict[str, dict[str, Any]] = {}
        self.idempotent: dict[str, tuple[str, int, dict[str, Any]]] = {}
        self.key_locks: dict[str, asyncio.Lock] = {}
        self.requests: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.script: dict[str, Any] = {}
        self.outbox: asyncio.Queue[dict[str, Any]] | None = None
        self.delivering: asyncio.Task[None] | None = None

    def new_id(self, prefix: str) -> str:
        return f"{prefix}_{secrets.token_hex(12)}"

    # --- webhooks ---------------------------------------------------------------------------
    def emit(self, kind: str, obj: dict[str, Any]) -> None:
        event = {
            "id": self.new_id("evt"),
            "object": "event",
            "api_version": "2025-09-30.clover",
            "created": int(time.time()),
            "livemode": False,
            "type": kind,
            "data": {"object": json.loads(json.dumps(obj))},
            "deliveries": [],
        }
        self.events.append(event)
        copies = int(self.script.get("copies", 1))
        batch = [event] * copies
        if self.script.get("shuffle"):
            random.shuffle(batch)
        if self.outbox is None:  # served inside Apex: no lifespan of its own
            self.outbox = asyncio.Queue()
            self.delivering = asyncio.create_task(self.deliver_forever())
        for item in batch:
            self.outbox.put_nowait(item)

    def signed(self, body: bytes) -> str:
        stamp = int(time.time())
        mac = hmac.new(self.webhook_secret.encode(), f"{stamp}.".encode() + body, hashlib.sha256)
        return f"t={stamp},v1={mac.hexdigest()}"

    async def deliver_forever(self) -> None:
        assert self.outbox is not None
        running: set[asyncio.Task[None]] = set()
        async with httpx.AsyncClient(timeout=10) as client:
            while True:
                event = await self.outbox.get()
                task = asyncio.create_task(self.deliver(client, event))
                running.add(task)
                task.add_done_callback(running.discard)

    async def deliver(self, client: httpx.AsyncClient, event: dict[str, Any]) -> None:
        """At least once: retried with backoff until the endpoint answers 2xx."""
        payload = {key: value for key, value in event.items() if key != "deliveries"}
        body = json.dumps(payload).encode()
        for attempt in range(30):
            if self.webhook_url is None:
                return
            try:
                response = await client.post(
                    self.webhook_url,
                    content=body,
                    headers={"Content-Type": "application/json",
                             "Stripe-Signature": self.signed(body)},
                )  # fmt: skip
                event["deliveries"].append(response.status_code)
                if response.status_code < 300:
                    return
            except httpx.HTTPError as exc:
                event["deliveries"].append(type(exc).__name__)
            await asyncio.sleep(min(5.0, 0.2 * 2**attempt))

    # --- the API ----------------------------------------------------------------------------
    async def api(self, request: Request) -> Response:
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return stripe_error(401, "invalid_request_error", "Invalid API Key provided.")
        body = await request.body()
        params = parse_form(body) if request.method == "POST" else dict(request.query_params)
        key = request.headers.get("idempotency-key")
        self.requests.append({"method": request.method, "path": request.url.path,
                              "params": params, "idempotency_key": key})  # fmt: skip
        if request.method != "POST" or key is None:
            status, answer, delay = await self.route(request, params)
            return self.answer(status, answer, delay, replayed=False)
        fingerprint = json.dumps([request.url.path, params], sort_keys=True)
        lock = self.key_locks.setdefault(key, asyncio.Lock())
        async with lock:
            if key in self.idempotent:
                seen, status, answer = self.idempotent[key]
                if seen != fingerprint:
                    return stripe_error(
                        400, "idempotency_error",
                        "Keys for idempotent requests can only be used with the same parameters "
                        "they were first used with.",
                    )  # fmt: skip
                return self.answer(status, answer, 0, replayed=True)
            status, answer, delay = await self.route(request, params)
            self.idempotent[key] = (fingerprint, status, answer)
        return self.answer(status, answer, delay, replayed=False)

    def answer(
        self, status: int, answer: dict[str, Any], delay: float, *, replayed: bool
    ) -> Response:
        headers = {"Request-Id": self.new_id("req")}
        if replayed:
            headers["Idempotent-Replayed"] = "true"
        response = JSONResponse(answer, status, headers=headers)
        if delay:
            # The work is done and remembered; the answer comes too late for the client.
            async def late() -> Response:
                await asyncio.sleep(delay)
                return response

            return _Late(late)
        return response

    async def route(
        self, request: Request, params: dict[str, Any]
    ) -> tuple[int, dict[str, Any], float]:
        parts = request.url.path.strip("/").split("/")[1:]  # without "v1"
        method = request.method
        if parts == ["customers"] and method == "POST":
            customer = {
                "id": self.new_id("cus"), "object": "customer", "email": params.get("email"),
                "name": params.get("name"), "metadata": params.get("metadata", {}),
                "invoice_settings": {"default_payment_method": None}, "created": int(time.time()),
            }  # fmt: skip
            self.customers[customer["id"]] = customer
            return 200, customer, 0
        if parts[:1] == ["customers"] and len(parts) == 2 and method == "GET":
            return self.found(self.customers.get(parts[1]), "customer")
        if parts == ["checkout", "sessions"] and method == "POST":
            return self.create_session(params)
        if parts[:2] == ["checkout", "sessions"] and len(parts) == 3:
            return self.found(self.sessions.get(parts[2]), "checkout.session")
        if parts == ["payment_intents"] and method == "POST":
            return self.create_intent(params)
        if parts[:1] == ["payment_intents"] and len(parts) == 2 and method == "GET":
            return self.found(self.intents.get(parts[1]), "payment_intent")
        if parts == ["refunds"] and method == "POST":
            return self.refund(params)
        unknown = f"Unrecognized request URL ({method}: {request.url.path})."
        return 404, {"error": {"type": "invalid_request_error", "message": unknown}}, 0

    def found(self, obj: dict[str, Any] | None, what: str) -> tuple[int, dict[str, Any], float]:
        if obj is None:
            return 404, {"error": {"type": "invalid_request_error", "code": "resource_missing",
                                   "message": f"No such {what}."}}, 0  # fmt: skip
        return 200, obj, 0

    def create_session(self, params: dict[str, Any]) -> tuple[int, dict[str, Any], float]:
        customer = params.get("customer")
        if customer not in self.customers:
            return self.found(None, "customer")
        if params.get("mode") != "setup":
            return 400, {"error": {"type": "invalid_request_error", "param": "mode",
                                   "message": "This gateway only does mode=setup."}}, 0  # fmt: skip
        session_id = self.new_id("cs_test")
        session = {
            "id": session_id, "object": "checkout.session", "mode": "setup",
            "customer": customer, "status": "open", "url": f"{self.base_url}/pay/{session_id}",
            "success_url": params.get("success_url"), "cancel_url": params.get("cancel_url"),
            "metadata": params.get("metadata", {}), "setup_intent": None,
            "created": int(time.time()),
        }  # fmt: skip
        self.sessions[session_id] = session
        return 200, session, 0

    def create_intent(self, params: dict[str, Any]) -> tuple[int, dict[str, Any], float]:
        customer = self.customers.get(params.get("customer", ""))
        method = params.get("payment_method", "")
        if customer is None or method not in self.methods:
            return self.found(None, "customer" if customer is None else "payment_method")
        try:
            amount = int(params["amount"])
        except (KeyError, ValueError):
            return 400, {"error": {"type": "invalid_request_error", "param": "amount",
                                   "message": "Missing required param: amount."}}, 0  # fmt: skip
        intent = {
            "id": self.new_id("pi"), "object": "payment_intent", "amount": amount,
            "amount_received": 0, "currency": params.get("currency", "usd"),
            "customer": customer["id"], "payment_method": method,
            "metadata": params.get("metadata", {}), "status": "succeeded",
            "last_payment_error": None, "created": int(time.time()),
        }  # fmt: skip
        self.intents[intent["id"]] = intent
        outcome = CARDS[self.methods[method]]
        delay = float(self.script.pop("delay_after_charge", 0))
        if outcome is None:
            intent["amount_received"] = amount
            self.emit("payment_intent.succeeded", intent)
            return 200, intent, delay
        code, decline, message = outcome
        error = {"type": "card_error", "code": code, "decline_code": decline,
                 "message": message, "payment_method": {"id": method}}  # fmt: skip
        intent["status"] = "requires_payment_method"
        intent["last_payment_error"] = error
        self.emit("payment_intent.payment_failed", intent)
        return 402, {"error": {**error, "payment_intent": intent}}, delay

    def refund(self, params: dict[str, Any]) -> tuple[int, dict[str, Any], float]:
        intent = self.intents.get(params.get("payment_intent", ""))
        if intent is None or intent["status"] != "succeeded":
            return self.found(None, "payment_intent")
        refunded = sum(r["amount"] for r in self.refunds.values()
                       if r["payment_intent"] == intent["id"])  # fmt: skip
        amount = int(params.get("amount", intent["amount"] - refunded))
        if amount > intent["amount"] - refunded:  # as Stripe answers it
            code = "charge_already_refunded" if refunded >= intent["amount"] else "amount_too_large"
            return 400, {"error": {"type": "invalid_request_error", "code": code,
                                   "message": "The refund exceeds what is left."}}, 0  # fmt: skip
        refund = {"id": self.new_id("re"), "object": "refund", "payment_intent": intent["id"],
                  "amount": amount, "status": "succeeded", "failure_reason": None,
                  "metadata": params.get("metadata", {})}  # fmt: skip
        self.refunds[refund["id"]] = refund
        return 200, refund, float(self.script.pop("delay_after_refund", 0))

    # --- the hosted page --------------------------------------------------------------------
    async def page(self, request: Request) -> Response:
        session = self.sessions.get(request.path_params["session"])
        if session is None:
            return HTMLResponse("No such checkout.", 404)
        if request.method == "GET":
            return HTMLResponse(
                "<!doctype html><title>Checkout</title><form method=post>"
                "<label>Card number <input name=card_number></label><button>Save card</button>"
                "</form>"
            )
        form = parse_form(await request.body())
        number = str(form.get("card_number", "")).replace(" ", "")
        if number not in CARDS:
            return HTMLResponse("Your card number is invalid.", 400)
        if session["status"] != "open":
            return HTMLResponse("This checkout is complete.", 409)
        method = self.set_card(session["customer"], number)
        session["status"] = "complete"
        session["setup_intent"] = self.new_id("seti")
        session["payment_method"] = method
        self.emit("checkout.session.completed", session)
        return RedirectResponse(session["success_url"] or "/", 303)

    def set_card(self, customer_id: str, number: str) -> str:
        method = self.new_id("pm")
        self.methods[method] = number
        self.customers[customer_id]["invoice_settings"]["default_payment_method"] = method
        return method

    # --- controls ---------------------------------------------------------------------------
    async def configure(self, request: Request) -> Response:
        body = await request.json()
        self.webhook_url = body.get("webhook_url", self.webhook_url)
        self.webhook_secret = body.get("webhook_secret", self.webhook_secret)
        self.api_key = body.get("api_key", self.api_key)
        return JSONResponse({"ok": True})

    async def set_script(self, request: Request) -> Response:
        self.script = await request.json()
        return JSONResponse(self.script)

    async def change_card(self, request: Request) -> Response:
        customer = request.path_params["customer"]
        number = (await request.json())["number"]
        if customer not in self.customers or number not in CARDS:
            return JSONResponse({"error": "no such customer or card"}, 404)
        return JSONResponse({"payment_method": self.set_card(customer, number)})

    async def authenticate(self, request: Request) -> Response:
        """The cardholder completes 3-D Secure for a charge that asked for it: it succeeds."""
        intent = self.intents.get(request.path_params["intent"])
        if intent is None or intent["status"] != "requires_payment_method":
            return JSONResponse({"error": "no such intent awaiting authentication"}, 404)
        intent["status"], intent["amount_received"] = "succeeded", intent["amount"]
        intent["last_payment_error"] = None
        self.emit("payment_intent.succeeded", intent)
        return JSONResponse(intent)

    async def ledger(self, _: Request) -> Response:
        charges = [intent for intent in self.intents.values()]
        return JSONResponse({"charges": charges, "refunds": list(self.refunds.values()),
                             "customers": list(self.customers.values())})  # fmt: skip

    async def list_events(self, _: Request) -> Response:
        return JSONResponse(self.events)

    async def list_requests(self, _: Request) -> Response:
        return JSONResponse(self.requests)


class _Late(Response):
    """An answer sent after a delay (the client may have given up by then)."""

    def __init__(self, make: Any) -> None:
        super().__init__()
        self.make = make

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        response = await self.make()
        await response(scope, receive, send)


def build(base_url: str, *, controls: bool = True) -> Starlette:
    """The gateway's app; `controls`: the test controls too (/_configure, /_script, ...),
    which a sandbox served inside Apex leaves out."""
    gateway = Gateway(base_url)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        gateway.outbox = asyncio.Queue()
        delivering = asyncio.create_task(gateway.deliver_forever())
        yield
        delivering.cancel()

    async def health(_: Request) -> Response:
        return JSONResponse({"ok": True})

    api_methods = ["GET", "POST"]
    test_controls = [
        Route("/_configure", gateway.configure, methods=["POST"]),
        Route("/_script", gateway.set_script, methods=["POST"]),
        Route("/_customers/{customer}/card", gateway.change_card, methods=["POST"]),
        Route("/_intents/{intent}/authenticate", gateway.authenticate, methods=["POST"]),
        Route("/_ledger", gateway.ledger),
        Route("/_events", gateway.list_events),
        Route("/_requests", gateway.list_requests),
    ]
    app = Starlette(
        routes=[
            Route("/_health", health),
            *(test_controls if controls else []),
            Route("/pay/{session}", gateway.page, methods=["GET", "POST"]),
            Route("/v1/{path:path}", gateway.api, methods=api_methods),
        ],
        lifespan=lifespan,
    )
    app.state.gateway = gateway
    return app


def with_sandbox(
    app: ASGIApp, *, public_url: str, loopback_url: str, webhook_secret: str
) -> ASGIApp:
    """`app`, with this gateway answering under /sandbox/payments (outside Apex's middleware:
    the stripe SDK sends form-encoded bodies): its payment page at `public_url`, its
    webhooks delivered to Apex at `loopback_url`."""
    sandbox = build(public_url.rstrip("/") + SANDBOX_PATH, controls=False)
    gateway: Gateway = sandbox.state.gateway
    gateway.api_key = SANDBOX_API_KEY
    gateway.webhook_secret = webhook_secret
    gateway.webhook_url = loopback_url + "/api/v1/billing/webhooks/stripe"

    async def dispatch(scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and path.startswith(SANDBOX_PATH + "/"):
            await sandbox({**scope, "path": path[len(SANDBOX_PATH) :]}, receive, send)
            return
        await app(scope, receive, send)

    return dispatch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = build(f"http://127.0.0.1:{args.port}")
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
