"""The README's screenshots, taken of a running Apex as a person sees it:

./run demo   # note the demo login it prints; it serves on :8000
.venv/bin/python -m tests.e2e.web.screenshots http://127.0.0.1:8000 PASSWORD docs/screenshots
"""

from __future__ import annotations

import sys
from pathlib import Path

from tests.harness.browser import PHONE, Browser

PAGES = (("#/", "spend"), ("#/findings", "findings"), ("#/chat", "chat"),
         ("#/billing", "billing"), ("#/team", "team"))  # fmt: skip


def main(base_url: str, password: str, folder: Path, email: str = "demo@apex.invalid") -> None:
    browser = Browser(base_url)
    try:
        browser.open("/")
        browser.wait_for("#email")
        browser.screenshot(folder / "signin.png")
        browser.sign_in(email, password)
        for route, name in PAGES:
            browser.go(route, name)
            browser.screenshot(folder / f"{name}.png")
    finally:
        browser.close()
    phone = Browser(base_url, size=PHONE)
    try:
        phone.sign_in(email, password)
        phone.wait_for("#total-spend")
        phone.screenshot(folder / "spend-phone.png")
    finally:
        phone.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], Path(sys.argv[3]))
