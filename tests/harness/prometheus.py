"""A real Prometheus server (Debian's `prometheus`) scraping the targets a test names, and
its HTTP API for PromQL."""

from __future__ import annotations

import shutil
import time
from typing import Any

import httpx

from tests.harness.procs import (
    HarnessError,
    ManagedProcess,
    ServiceProcess,
    free_port,
    make_workdir,
    tail,
)


class PrometheusServer(ServiceProcess):
    def __init__(self, jobs: dict[str, tuple[list[str], str | None]], interval: str = "500ms"):
        """`jobs`: name → (host:port targets, bearer token or None)."""
        super().__init__()
        self.root = make_workdir("prometheus")
        self.port = free_port()
        self.log_path = self.root / "prometheus.log"
        self.jobs = jobs
        self.interval = interval

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _config(self) -> str:
        lines = ["global:", f"  scrape_interval: {self.interval}",
                 f"  scrape_timeout: {self.interval}", "scrape_configs:"]  # fmt: skip
        for name, (targets, token) in self.jobs.items():
            lines += [f"  - job_name: {name}", "    static_configs:",
                      f"      - targets: [{', '.join(repr(t) for t in targets)}]"]  # fmt: skip
            if token is not None:
                lines += ["    authorization:", "      type: Bearer", f"      credentials: {token}"]
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 30) -> PrometheusServer:
        binary = shutil.which("prometheus")
        if binary is None:
            raise HarnessError("prometheus is not installed (Debian package prometheus)")
        config = self.root / "prometheus.yml"
        config.write_text(self._config())
        self.process = ManagedProcess(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={self.root / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            log_path=self.log_path, cwd=self.root,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise HarnessError(f"Prometheus did not become ready:\n{tail(self.log_path)}")

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The instant vector PromQL answers now: [{"metric": {...}, "value": [t, "v"]}]."""
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=10)
        response.raise_for_status()
        body = response.json()
        if body["status"] != "success":
            raise HarnessError(f"PromQL {promql!r} failed: {body}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def scalar(self, promql: str) -> float | None:
        """The single value of an aggregating query (None when it matches nothing)."""
        result = self.query(promql)
        return float(result[0]["value"][1]) if result else None

    def targets_up(self) -> dict[str, str]:
        """scrape URL → health ("up", "down", "unknown") of every active target."""
        response = httpx.get(f"{self.url}/api/v1/targets", timeout=10)
        return {t["scrapeUrl"]: t["health"] for t in response.json()["data"]["activeTargets"]}

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
