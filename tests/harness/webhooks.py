"""`WebhookReceiver`: the process of tests.harness.webhook_receiver, stoppable and
restartable on the same port, with what it received kept on disk."""

from __future__ import annotations

import json
import shutil
from typing import Any

from tests.harness.procs import (
    ServiceProcess,
    free_port,
    make_workdir,
    start_python_server,
)


class WebhookReceiver(ServiceProcess):
    def __init__(self) -> None:
        super().__init__()
        self.root = make_workdir("webhooks")
        self.port = free_port()
        self.log_path = self.root / "receiver.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20) -> WebhookReceiver:
        self.process = start_python_server(
            "tests.harness.webhook_receiver",
            ["--port", str(self.port), "--dir", str(self.root)],
            root=self.root,
            log_path=self.log_path,
            ready_url=f"{self.url}/_health",
            what="the webhook receiver",
            timeout=timeout,
        )
        return self

    def verify_with(self, secret: str) -> None:
        """The secret signatures are checked with (read by the receiver on each request)."""
        (self.root / "secret").write_text(secret)

    def received(self, path: str | None = None) -> list[dict[str, Any]]:
        log = self.root / "received.jsonl"
        if not log.exists():
            return []
        entries = [json.loads(line) for line in log.read_text().splitlines() if line]
        return [entry for entry in entries if path is None or entry["path"] == path]

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
