"""The browser app in real Chromium (Debian's) against real `apex serve` on PostgreSQL and
Redis, as its users meet it: sign in, read the month's spend (every figure checked to the
cent against sums this test computes from the records it sent), act on findings, and what
a viewer may not do. Every page is checked with axe-core and at a phone's width.

`APEX_SCREENSHOTS=docs/screenshots` saves the pages shown in the README."""

from __future__ import annotations

import json
import os
import random
import re
from collections import defaultdict
from collections.abc import Callable, Iterator
from decimal import ROUND_HALF_UP, Decimal
from email.message import Message
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest
import redis

from tests.harness import ApexServer, ApexWorker, PostgresCluster, RedisServer
from tests.harness.browser import PHONE, Browser
from tests.harness.llm import LlmServer
from tests.harness.nginx import NginxServer
from tests.harness.oidc import OidcProvider
from tests.harness.payments import PaymentsServer
from tests.harness.smtp import SmtpServer
from tests.integration.conftest import apex_env
from tests.integration.critical.conftest import bearer, join, set_tier, signup
from tests.integration.critical.test_realtime import instance_of

MONTH = "2026-10"
WORKLOADS = ("support-chat", "code-review", "ticket-triage", "nightly-digest")
SHOTS = Path(os.environ["APEX_SCREENSHOTS"]) if os.environ.get("APEX_SCREENSHOTS") else None
# axe-core impacts a page may not have (moderate and minor ones are reported, not failed).
SERIOUS = {"serious", "critical"}


def cents(amount: Decimal) -> str:
    """How the page shows money: half up to the cent, thousands separated."""
    return f"${amount.quantize(Decimal('0.01'), rounding=ROUND_HALF_UP):,}"


Spend = dict[tuple[str, str], Decimal]  # (workload, model) → dollars


def month_of_records(seed: int) -> tuple[list[dict[str, Any]], Spend]:
    """A month of calls with the costs the customer reported (so every dollar is known
    here), user ids on every call, and the expected spend per workload and model."""
    rng = random.Random(seed)
    records: list[dict[str, Any]] = []
    spend: Spend = defaultdict(Decimal)
    for n in range(600):
        workload, model = rng.choice(WORKLOADS), rng.choice(["gpt-4o", "gpt-4o-mini"])
        cost = Decimal(rng.randint(1, 250_000)) / 1_000_000  # up to $0.25, to the micro-dollar
        spend[workload, model] += cost
        records.append({
            "id": f"call-{seed}-{n}", "timestamp": f"{MONTH}-{1 + n % 28:02d}T{n % 24:02d}:15:00Z",
            "provider": "openai", "model": model,
            "workload": workload, "end_user": f"user-{rng.randint(1, 40)}",
            "input_tokens": rng.randint(50, 4000), "output_tokens": rng.randint(5, 800),
            "cost_usd": str(cost),
        })  # fmt: skip
    return records, dict(spend)


@pytest.fixture
def server(
    database_url: str, fresh_redis: RedisServer, start_apex: Callable[..., ApexServer]
) -> ApexServer:
    return start_apex(database_url, fresh_redis.url, session_cookie_secure="false")


@pytest.fixture
def browsers() -> Iterator[Callable[..., Browser]]:
    opened: list[Browser] = []

    def open_browser(base_url: str, **options: Any) -> Browser:
        browser = Browser(base_url, **options)
        opened.append(browser)
        return browser

    yield open_browser
    for browser in opened:
        browser.close()


class Owner(NamedTuple):
    auth: dict[str, str]
    email: str
    organization_id: str
    spend: Spend


def owner_with_usage(client: httpx.Client, mail_server: SmtpServer) -> Owner:
    account = signup(client, mail_server=mail_server)
    assert account.status_code == 201, account.text
    auth = bearer(account)
    email = client.get("/api/v1/users/me", headers=auth).json()["email"]
    records, spend = month_of_records(seed=7)
    sent = client.post("/api/v1/usage/events", headers=auth, json={"records": records})
    assert sent.json()["accepted"] == len(records), sent.text[:500]
    retried = client.post("/api/v1/usage/events", headers=auth, json={"records": records[:50]})
    assert retried.json()["duplicates"] == 50, retried.text[:500]  # retries are not spend twice
    return Owner(auth, email, account.json()["organization_id"], spend)


def assert_accessible(browser: Browser, page: str) -> None:
    violations = [v for v in browser.axe() if v.get("impact") in SERIOUS]
    assert not violations, (
        page,
        [(v["id"], v["help"], len(v.get("nodes", []))) for v in violations],
    )


def shoot(browser: Browser, name: str) -> None:
    if SHOTS is not None:
        browser.screenshot(SHOTS / f"{name}.png")


def test_sign_in_and_the_months_spend_to_the_cent(
    server: ApexServer, mail_server: SmtpServer, browsers: Callable[..., Browser]
) -> None:
    client = httpx.Client(base_url=server.base_url, timeout=30)
    _, email, _, spend = owner_with_usage(client, mail_server)
    total = sum(spend.values(), Decimal(0))

    browser = browsers(server.base_url)
    browser.open("/")
    browser.wait_for("#email")
    assert not browser.find("#bar").is_displayed()  # no navigation before signing in
    assert_accessible(browser, "sign-in")
    shoot(browser, "signin")
    # A wrong password is refused on the page, with words that do not say whether the
    # account exists.
    browser.find("#email").send_keys(email)
    browser.find("#password").send_keys("not the password")
    browser.find("form.signin button[type=submit]").click()
    assert "Wrong email or password." in browser.wait_for("[role=alert]").text
    browser.sign_in(email, "correct horse battery staple")

    # The month's total, every workload's and every row's spend, to the cent, as computed here.
    assert browser.wait_for("#total-spend").text == cents(total)
    assert browser.find("#period").get_attribute("value") == MONTH
    shown = {
        (cells[0], cells[2]): cells[-1]
        for row in browser.find_all(".table-wrap tbody tr")
        if (cells := [c.text for c in row.find_elements("css selector", "td")])
    }
    assert shown == {key: cents(amount) for key, amount in spend.items()}
    per_workload: dict[str, Decimal] = defaultdict(Decimal)
    for (workload, _), amount in spend.items():
        per_workload[workload] += amount
    bars = [t.text for t in browser.find_all("svg[aria-label='Spend by workload'] text.bar-value")]
    assert bars == [cents(a) for _, a in sorted(per_workload.items(), key=lambda i: -i[1])]
    assert "600 calls priced" not in browser.text("#coverage")  # the customer reported them
    assert "600 at the cost you reported" in browser.text("#coverage")
    assert_accessible(browser, "spend")
    shoot(browser, "spend")

    # The table filters and sorts.
    browser.find(".table-tools input").send_keys("nightly")
    browser.wait_until(lambda: all(r.text.startswith("nightly-digest")
                                   for r in browser.find_all(".table-wrap tbody tr")),
                       message="the filter keeps only nightly-digest")  # fmt: skip

    # Every page opens, accessible, and nothing failed in the console.
    for route, name in (("#/findings", "findings"), ("#/billing", "billing"), ("#/team", "team")):
        browser.go(route, name)
        assert_accessible(browser, name)
        shoot(browser, name)
    # Nothing failed in the console but the 401s asked for (no session yet; a wrong password).
    errors = [e for e in browser.console_errors() if "status of 401" not in e]
    assert errors == [], errors

    # A phone's width: the same figures, nothing cut off sideways.
    phone = browsers(server.base_url, size=PHONE)
    phone.sign_in(email, "correct horse battery staple")
    assert phone.wait_for("#total-spend").text == cents(total)
    width = phone.driver.execute_script("return document.documentElement.scrollWidth")
    assert width <= PHONE[0], f"the page is {width}px wide on a {PHONE[0]}px screen"
    shoot(phone, "spend-phone")


def test_a_viewer_sees_no_mutating_control_and_a_forged_one_is_refused(
    server: ApexServer,
    mail_server: SmtpServer,
    browsers: Callable[..., Browser],
    postgres: PostgresCluster,
    database_url: str,
) -> None:
    client = httpx.Client(base_url=server.base_url, timeout=30)
    owner = owner_with_usage(client, mail_server)
    set_tier(postgres, database_url, owner.organization_id, "mid")  # Free has one seat
    viewer = join(client, owner.auth, "viewer")

    browser = browsers(server.base_url)
    browser.sign_in(viewer["email"], "correct horse battery staple")
    # The viewer joined the owner's organisation: switch to it on the page.
    browser.wait_for("#organization")
    browser.driver.execute_script(
        "const s = document.getElementById('organization');"
        "s.value = [...s.options].find(o => o.text !== s.selectedOptions[0].text).value;"
        "s.dispatchEvent(new Event('change'));"
    )
    browser.wait_until(lambda: "(viewer)" in browser.text("#who"), message="acting as the viewer")
    for route, page in (("#/team", "team"), ("#/billing", "billing"), ("#/findings", "findings")):
        browser.go(route, page)
        controls = [b.text for b in browser.find_all("main button, main select, main form")
                    if b.get_attribute("class") != "sort"]  # fmt: skip
        assert controls == [], (route, controls)
    # A change forged from the page's own session (cookie and CSRF token) is refused.
    answer = browser.driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "import('/app/js/api.js').then(api => api.post('/organizations/current/invitations',"
        " {email: 'forged@example.test', role: 'admin'})).then(() => done('accepted'),"
        " e => done(e.status + ' ' + e.message));"
    )
    assert answer.startswith("403 "), answer
    invitations = client.get("/api/v1/organizations/current/invitations", headers=owner.auth)
    assert invitations.status_code == 200, invitations.text
    assert "forged@example.test" not in {i["email"] for i in invitations.json()}


def test_chat_streams_a_run_and_carries_on_when_its_instance_dies(
    database_url: str,
    fresh_redis: RedisServer,
    mail_server: SmtpServer,
    start_apex: Callable[..., ApexServer],
    start_worker: Callable[..., ApexWorker],
    browsers: Callable[..., Browser],
) -> None:
    """Two instances behind the production nginx configuration and a worker whose LLM
    answers slowly: a message in the chat starts a run whose events stream onto the page;
    the instance holding the page's WebSocket is killed mid-run; the page reconnects
    through nginx to the other and resumes: every event of the run shows once, in order,
    and the report appears."""
    llm = LlmServer().start()
    try:
        llm.script({"delay": 2}, {"delay": 2}, {"delay": 2})  # the run outlives the kill
        servers = [start_apex(database_url, fresh_redis.url, session_cookie_secure="false")
                   for _ in range(2)]  # fmt: skip
        start_worker(database_url, fresh_redis.url, llm_provider="openai",
                     llm_base_url=llm.base_url, llm_api_key="sk-test")  # fmt: skip
        nginx = NginxServer([s.port for s in servers]).start()
        try:
            client = httpx.Client(base_url=nginx.base_url, timeout=30)
            owner = owner_with_usage(client, mail_server)
            browser = browsers(nginx.base_url)
            browser.sign_in(owner.email, "correct horse battery staple")
            browser.go("#/chat", "chat")
            live = browser.wait_until(lambda: _live_instance(browser), message="the page is live")
            browser.find("#message").send_keys("Where can we save this month?\n")
            run = browser.wait_for(".run", timeout=30)
            run_id = run.get_attribute("data-run")
            # Mid-run: the instance holding the page's connection dies.
            assert browser.find_all(".run .report") == [], "the run ended before the kill"
            [victim] = [s for s in servers if instance_of(s) == live]
            assert victim.process is not None
            victim.process.kill()
            browser.wait_until(lambda: _live_instance(browser) not in (None, live), 30,
                               "the page is live again on the other instance")  # fmt: skip
            browser.wait_for(".run .report", timeout=60)
            # The reconnection reused the page's token, still valid: the browser session has
            # minted exactly one (a flapping network does not eat its quota of 50).
            store = redis.Redis.from_url(fresh_redis.url, decode_responses=True)
            [minted] = store.keys("apex:session-tokens:*")
            assert store.hlen(minted) == 1
            store.close()
            assert_accessible(browser, "chat")
            shoot(browser, "chat")
            shown = [li.get_attribute("class") for li in browser.find_all(".run .steps li")]
            events = client.get(f"/api/v1/agents/runs/{run_id}/events", headers=owner.auth)
            assert events.status_code == 200, events.text
            steps = [e["type"] for e in events.json()
                     if e["type"] not in ("stream_chunk", "final_report")]  # fmt: skip
            assert shown == steps  # every step once, in order, across the reconnection
            streamed = "".join(e["payload"]["text"] for e in events.json()
                               if e["type"] == "stream_chunk")  # fmt: skip
            assert browser.text(".run .stream") == streamed.strip()
        finally:
            nginx.stop()
    finally:
        llm.stop()


def _live_instance(browser: Browser) -> str | None:
    state = browser.find("#live-state")
    if state.get_attribute("data-state") != "live":
        return None
    return str(state.text).removeprefix("Live (instance ").removesuffix(")")


def test_sign_in_with_openid_connect_lands_in_the_app(
    database_url: str, fresh_redis: RedisServer, browsers: Callable[..., Browser]
) -> None:
    """The sign-in page offers every configured provider; its button goes through the
    provider (the harness's, a real OpenID Connect server) and back into the app, signed in:
    a new account sees the designed empty state, not a blank page."""
    server = ApexServer(apex_env(database_url, fresh_redis.url, session_cookie_secure="false"))
    callback = f"{server.base_url}/api/v1/auth/oidc/local/callback"
    provider = OidcProvider(client_id="apex-web", client_secret="provider-secret-1",
                            redirect_uri=callback).start()  # fmt: skip
    server.env["APEX_OIDC_PROVIDERS"] = json.dumps([{
        "name": "local", "issuer": provider.issuer, "client_id": "apex-web",
        "client_secret": "provider-secret-1", "redirect_uri": callback}])  # fmt: skip
    try:
        server.start()
        browser = browsers(server.base_url)
        browser.open("/")
        browser.wait_for(".providers a.button").click()
        browser.wait_until(lambda: "oidc-user@example.test" in browser.text("#who"), 30,
                           "signed in as the provider's user")  # fmt: skip
        assert browser.driver.current_url == f"{server.base_url}/#/"
        assert "No LLM calls recorded" in browser.wait_for(".empty").text
        assert_accessible(browser, "empty spend")
    finally:
        server.stop()
        provider.stop()


def test_upgrade_through_checkout_lifts_the_limit_on_the_page(
    database_url: str,
    fresh_redis: RedisServer,
    mail_server: SmtpServer,
    payments: PaymentsServer,
    start_apex: Callable[..., ApexServer],
    start_worker: Callable[..., ApexWorker],
    browsers: Callable[..., Browser],
) -> None:
    """A Free owner sees the Free quota; "Upgrade to Early" goes to the payment gateway's
    hosted page (the harness's Stripe double), a test card is entered there, and back in
    the app the plan becomes Early and the page shows Early's quota once the gateway's
    webhook has arrived."""
    server = start_apex(database_url, fresh_redis.url, session_cookie_secure="false",
                        **payments.apex_settings())  # fmt: skip
    start_worker(database_url, fresh_redis.url, **payments.apex_settings())
    payments.send_webhooks_to(f"{server.base_url}/api/v1/billing/webhooks/stripe")
    client = httpx.Client(base_url=server.base_url, timeout=30)
    owner = owner_with_usage(client, mail_server)

    browser = browsers(server.base_url)
    browser.sign_in(owner.email, "correct horse battery staple")
    browser.go("#/billing", "billing")
    assert browser.text("#plan") == "Free"
    assert "of 100,000 included" in browser.text(".card:has(#records)")
    # The plan cards, as the brief's catalogue states them (read by a person, not a parser).
    free = browser.text("article[aria-label='Free plan']").splitlines()
    assert "1 seat" in free, free
    assert "10 chat messages a minute" in free, free
    enterprise = browser.text("article[aria-label='Enterprise plan']").splitlines()
    assert "1,000 chat messages a minute" in enterprise, enterprise
    assert "20 concurrent agent runs" in enterprise, enterprise
    browser.find("button[data-tier='early']").click()
    browser.wait_until(lambda: browser.driver.current_url.startswith(payments.url), 15,
                       "on the gateway's hosted page")  # fmt: skip
    browser.wait_for("input[name=card_number]").send_keys("4242424242424242")
    browser.find("form button").click()
    browser.wait_until(lambda: browser.driver.current_url.startswith(server.base_url), 15,
                       "back in the app")  # fmt: skip
    # The page may first show the new plan over the old quota (the organisation's cached
    # tier is invalidated a moment after the webhook's commit); it must then redraw itself.
    browser.wait_until(lambda: browser.find_all("#plan") and browser.text("#plan") == "Early"
                       and "of 5,000,000 included" in browser.text(".card:has(#records)"),
                       45, "the plan became Early with Early's quota")  # fmt: skip
    assert "?checkout" not in browser.driver.current_url  # the notice is shown once
    subscription = client.get("/api/v1/billing/subscription", headers=owner.auth).json()
    assert (subscription["tier"], subscription["status"]) == ("early", "active")


def test_sign_up_and_reset_the_password_from_the_mailed_links(
    server: ApexServer, mail_server: SmtpServer, browsers: Callable[..., Browser]
) -> None:
    """Sign up on the page, confirm from the link the mail carries, sign in; forget the
    password, set a new one from the reset mail's link, sign in with it."""
    email, password, new_password = (
        "new-person@example.test",
        "a long first password",
        "an even longer one",
    )
    browser = browsers(server.base_url)
    browser.open("/")
    browser.wait_for("a[href='#/signup']").click()
    seen = mail_server.keys()
    browser.wait_for("#email").send_keys(email)
    browser.find("#password").send_keys(password)
    browser.find("#organization_name").send_keys("Newco")
    browser.find("form button[type=submit]").click()
    browser.wait_for_text("#form-title", "Check your mail")
    browser.driver.get(_link_in(mail_server.next_mail(email, seen=seen, subject="Confirm"), server))
    browser.wait_for_text("#form-title", "Your account is ready")
    browser.sign_in(email, password)
    assert email in browser.text("#who")
    assert "No LLM calls recorded" in browser.wait_for(".empty").text
    assert_accessible(browser, "empty spend")

    browser.find("#signout").click()
    browser.wait_for("a[href='#/forgot']").click()
    seen = mail_server.keys()
    browser.wait_for("#email").send_keys(email)
    browser.find("form button[type=submit]").click()
    browser.wait_for_text("#form-title", "Check your mail")
    browser.driver.get(_link_in(mail_server.next_mail(email, seen=seen, subject="Reset"), server))
    browser.wait_for("#password").send_keys(new_password)
    browser.find("form button[type=submit]").click()
    browser.wait_for_text("#form-title", "Password changed")
    browser.sign_in(email, new_password)
    assert email in browser.text("#who")


def _link_in(mail: Message, server: ApexServer) -> str:
    body = mail.get_payload(decode=True)
    text = body.decode() if isinstance(body, bytes) else str(mail.get_payload())
    found = re.search(r"(http://\S+/#/(?:verify|reset)\?token=[A-Za-z0-9_-]+)", text)
    assert found is not None, text
    assert found.group(1).startswith(f"{server.base_url}/#/"), found.group(1)
    return found.group(1)


def test_the_team_page_sets_up_an_alert_a_negotiated_price_and_an_ingestion_key(
    server: ApexServer, mail_server: SmtpServer, browsers: Callable[..., Browser]
) -> None:
    """An owner fills the team page's forms as a person would: a daily spend alert, a
    negotiated price for a model the catalogue does not know, and a key for usage ingestion.
    Each is read back over the API exactly as typed, the page lists it, and the key the page
    shows once stores records (and only records)."""
    client = httpx.Client(base_url=server.base_url, timeout=30)
    owner = owner_with_usage(client, mail_server)
    browser = browsers(server.base_url)
    browser.sign_in(owner.email, "correct horse battery staple")
    browser.go("#/team", "team")

    def fill(css: str, value: str) -> None:
        field = browser.find(css)
        field.clear()
        field.send_keys(value)

    fill("#rule-name", "Daily spend cap")
    fill("#rule-threshold", "250.50")
    browser.find("form:has(#rule-name) button[type=submit]").click()
    browser.wait_for_text("main", "Daily spend cap: spend above 250.50 (ok)")
    (rule,) = client.get("/api/v1/alerts/rules", headers=owner.auth).json()
    assert (rule["name"], rule["kind"], Decimal(rule["threshold"]), rule["window_minutes"]) == (
        "Daily spend cap", "spend", Decimal("250.50"), 1440,
    )  # fmt: skip
    assert rule["channels"] == [{"type": "email", "to": owner.email}]

    browser.go("#/team", "team")
    fill("#price-model", "acme-finetune-7b")
    fill("#price-in", "0.125")
    fill("#price-out", "0.5")
    browser.find("form:has(#price-model) button[type=submit]").click()
    browser.wait_for_text("main", "openai · acme-finetune-7b: $0.125 in, $0.5 out per million")
    prices = client.get("/api/v1/pricing", headers=owner.auth).json()
    (price,) = [p for p in prices if p["model"] == "acme-finetune-7b"]
    assert (price["provider"], Decimal(price["input"]), Decimal(price["output"])) == (
        "openai", Decimal("0.125"), Decimal("0.5"),
    )  # fmt: skip

    browser.go("#/team", "team")
    fill("#key-name", "collector")
    browser.find("form:has(#key-name) button[type=submit]").click()
    key = browser.wait_for("main .notice code").text
    assert key.startswith("apx_"), key
    keyed = {"Authorization": f"Bearer {key}"}
    record = {"id": "from-the-key", "timestamp": f"{MONTH}-03T10:00:00Z", "provider": "openai",
              "model": "acme-finetune-7b", "workload": "support-chat", "end_user": "user-1",
              "input_tokens": 8_000_000, "output_tokens": 2_000_000}  # fmt: skip
    stored = client.post("/api/v1/usage/events", headers=keyed, json={"records": [record]})
    assert stored.status_code == 200, stored.text
    assert stored.json()["accepted"] == 1
    # Costed at the negotiated price typed above: 8 M x $0.125 + 2 M x $0.5 = $2.00.
    read = client.get("/api/v1/usage/events/from-the-key", headers=owner.auth).json()
    assert (Decimal(read["cost_usd"]), read["cost_source"]) == (Decimal("2.00"), "catalogue")
    assert client.get("/api/v1/alerts/rules", headers=keyed).status_code == 403  # records only
    client.close()
