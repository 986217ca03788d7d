"""The embedded default's demo checkout: `apex serve` with no database, Redis or payment
gateway configured serves its sandbox gateway under /sandbox/payments, and buying a plan
goes all the way through it (the production `stripe` client, the hosted page, the signed
webhook, the first invoice charged and paid) with Stripe's test card."""

from __future__ import annotations

import httpx

from tests.harness import ApexServer
from tests.harness.procs import wait_until
from tests.integration.conftest import SharedMail
from tests.integration.critical.conftest import bearer, signup

BILLING = "/api/v1/billing"


def test_embedded_default_buys_a_plan_through_its_sandbox() -> None:
    # What a person has after `pip install` and `apex serve`: no APEX_DATABASE_URL, no
    # APEX_REDIS_URL, no APEX_STRIPE_*; development (the default environment).
    server = ApexServer({"APEX_SMTP_URL": SharedMail.get().url}).start()
    try:
        with server.client(timeout=30) as client:
            auth = bearer(signup(client))
            checkout = client.post(f"{BILLING}/checkout", headers=auth, json={"tier": "early"})
            assert checkout.status_code == 200, checkout.text
            url = checkout.json()["url"]
            assert url.startswith(f"{server.base_url}/sandbox/payments/pay/"), url
            page = httpx.get(url, timeout=10)
            assert page.status_code == 200
            assert "card_number" in page.text  # the hosted page asks for a card
            paid = httpx.post(url, data={"card_number": "4242424242424242"}, timeout=10)
            assert paid.status_code == 303, paid.text

            def subscription() -> dict[str, str]:
                found: dict[str, str] = client.get(f"{BILLING}/subscription", headers=auth).json()
                return found

            assert wait_until(lambda: subscription()["status"] == "active", 30), subscription()
            assert subscription()["tier"] == "early"

            def invoices() -> list[dict[str, str]]:
                found: list[dict[str, str]] = client.get(f"{BILLING}/invoices", headers=auth).json()
                return found

            assert wait_until(lambda: [i["status"] for i in invoices()] == ["paid"], 30), invoices()
            assert invoices()[0]["total_usd"] == "99.00"
            # The sandbox's test controls are not served inside Apex.
            assert httpx.get(f"{server.base_url}/sandbox/payments/_ledger").status_code == 404
    finally:
        server.stop()
