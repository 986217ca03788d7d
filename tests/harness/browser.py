"""A real Chromium (Debian's `chromium`, driven through Debian's `chromium-driver`; never
a downloaded browser) for the browser app's tests: headless, one profile per instance,
with axe-core (pinned by tests/e2e/web/package-lock.json) injected on demand."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.common.exceptions import (
    NoSuchElementException,
    StaleElementReferenceException,
    TimeoutException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from tests.harness.procs import HarnessError

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
AXE = (
    Path(__file__).resolve().parents[1] / "e2e" / "web" / "node_modules" / "axe-core" / "axe.min.js"
)
DESKTOP = (1280, 900)
PHONE = (390, 844)


class Browser:
    def __init__(self, base_url: str, size: tuple[int, int] = DESKTOP) -> None:
        for path in (CHROMIUM, CHROMEDRIVER):
            if not Path(path).exists():
                raise HarnessError(
                    f"{path} is missing: ./run installs chromium and chromium-driver"
                )
        self.base_url = base_url
        self.profile = tempfile.mkdtemp(prefix="apex-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        window = f"--window-size={max(size[0], 800)},{size[1]}"
        for argument in ("--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", f"--user-data-dir={self.profile}",
                         window, "--no-first-run"):  # fmt: skip
            options.add_argument(argument)
        if size[0] < 800:  # a window is never that narrow: the phone's screen is emulated
            metrics = {"width": size[0], "height": size[1], "pixelRatio": 2, "touch": True}
            options.add_experimental_option("mobileEmulation", {"deviceMetrics": metrics})
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)

    def open(self, path: str = "/") -> None:
        self.driver.get(self.base_url + path)

    def wait_for(self, css: str, timeout: float = 15) -> WebElement:
        try:
            return WebDriverWait(self.driver, timeout, poll_frequency=0.1).until(
                EC.visibility_of_element_located((By.CSS_SELECTOR, css))
            )
        except TimeoutException:
            raise AssertionError(f"{css} never appeared; page: {self.text()[:2000]}") from None

    def wait_for_text(self, css: str, text: str, timeout: float = 15) -> str:
        """The text of `css` once it contains `text` (the page changes it in place)."""
        found: str = self.wait_until(
            lambda: next((e.text for e in self.find_all(css) if text in e.text), None),
            timeout,
            f"{css} never said {text!r}",
        )
        return found

    def wait_until(self, condition: Any, timeout: float = 30, message: str = "") -> Any:
        try:
            # The page redraws what it shows: an element read mid-redraw is read again.
            return WebDriverWait(
                self.driver, timeout, poll_frequency=0.1,
                ignored_exceptions=(StaleElementReferenceException, NoSuchElementException),
            ).until(lambda _: condition())  # fmt: skip
        except TimeoutException:
            raise AssertionError(f"{message or condition}; page: {self.text()[:2000]}") from None

    def find(self, css: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def find_all(self, css: str) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def text(self, css: str = "body") -> str:
        return str(self.driver.find_element(By.CSS_SELECTOR, css).text)

    def sign_in(self, email: str, password: str) -> None:
        self.open("/")
        self.wait_for("#email").send_keys(email)
        self.find("#password").send_keys(password)
        self.find("form.signin button[type=submit]").click()
        self.wait_for("#bar .who #who")

    def go(self, route: str, page: str) -> WebElement:
        """Follow an in-app link (the hash route) and wait until `page` is drawn (main.js
        marks `main[data-page]` once a page's data is on screen)."""
        self.driver.execute_script("location.hash = arguments[0]", route)
        return self.wait_for(f"main[data-page='{page}']")

    def axe(self) -> list[dict[str, Any]]:
        """axe-core's violations of WCAG 2.x A/AA on the page as it is now."""
        if not AXE.exists():
            raise HarnessError(f"{AXE} is missing: ./run installs it (npm ci in tests/e2e/web)")
        self.driver.execute_script(AXE.read_text())
        result = self.driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "axe.run(document, {runOnly: ['wcag2a', 'wcag2aa', 'wcag21aa', 'best-practice']})"
            ".then(r => done(JSON.stringify(r.violations)),"
            " e => done(JSON.stringify([{id: 'axe', impact: 'critical', help: String(e)}])));"
        )
        violations: list[dict[str, Any]] = json.loads(result)
        return violations

    def console_errors(self) -> list[str]:
        entries = self.driver.get_log("browser")  # type: ignore[no-untyped-call]
        return [e["message"] for e in entries if e["level"] == "SEVERE"]

    def screenshot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.driver.save_screenshot(str(path))

    def close(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)
