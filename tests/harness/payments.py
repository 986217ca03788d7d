"""Start the local payment gateway (`apex.billing.sandbox`, through
tests/harness/payments_server.py) as a process of its own."""

from __future__ import annotations

import shutil
from typing import Any

import httpx

from tests.harness.procs import (
    ServiceProcess,
    free_port,
    make_workdir,
    start_python_server,
)

API_KEY = "sk_test_apex_harness"
WEBHOOK_SECRET = "whsec_apex_harness"


class PaymentsServer(ServiceProcess):
    def __init__(self) -> None:
        super().__init__()
        self.root = make_workdir("payments")
        self.port = free_port()
        self.log_path = self.root / "payments.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20) -> PaymentsServer:
        self.process = start_python_server(
            "tests.harness.payments_server",
            ["--port", str(self.port)],
            root=self.root,
            log_path=self.log_path,
            ready_url=f"{self.url}/_health",
            what="the payment gateway",
            timeout=timeout,
        )
        self._post("/_configure", {"api_key": API_KEY, "webhook_secret": WEBHOOK_SECRET})
        return self

    def apex_settings(self) -> dict[str, str]:
        """What an `apex serve` needs to use this gateway (start_apex keyword arguments)."""
        return {
            "stripe_api_key": API_KEY,
            "stripe_api_base": self.url,
            "stripe_webhook_secret": WEBHOOK_SECRET,
        }

    def send_webhooks_to(self, url: str | None) -> None:
        """Where events are delivered (None: they are kept, not delivered)."""
        self._post("/_configure", {"webhook_url": url})

    def script(self, **behaviour: Any) -> None:
        self._post("/_script", behaviour)

    def pay_checkout(self, checkout_url: str, card: str = "4242424242424242") -> httpx.Response:
        """What the customer does on the hosted page: enter a card and submit."""
        return httpx.post(checkout_url, data={"card_number": card}, timeout=10)

    def change_card(self, customer_id: str, card: str) -> None:
        self._post(f"/_customers/{customer_id}/card", {"number": card})

    def authenticate(self, intent_id: str) -> None:
        self._post(f"/_intents/{intent_id}/authenticate", {})

    def ledger(self) -> dict[str, Any]:
        ledger: dict[str, Any] = self._get("/_ledger")
        return ledger

    def events(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = self._get("/_events")
        return events

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        response = httpx.post(f"{self.url}{path}", json=body, timeout=5)
        response.raise_for_status()
        return response.json()

    def _get(self, path: str) -> Any:
        response = httpx.get(f"{self.url}{path}", timeout=5)
        response.raise_for_status()
        return response.json()

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self.root, ignore_errors=True)
