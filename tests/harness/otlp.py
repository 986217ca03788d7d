"""`OtlpReceiver`: the process of tests.harness.otlp_receiver and the spans it received."""

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


class OtlpReceiver(ServiceProcess):
    def __init__(self) -> None:
        super().__init__()
        self.root = make_workdir("otlp")
        self.port = free_port()
        self.log_path = self.root / "receiver.log"

    @property
    def endpoint(self) -> str:
        """What OTEL_EXPORTER_OTLP_ENDPOINT takes (the exporter adds /v1/traces)."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20) -> OtlpReceiver:
        self.process = start_python_server(
            "tests.harness.otlp_receiver",
            ["--port", str(self.port), "--dir", str(self.root)],
            root=self.root,
            log_path=self.log_path,
            ready_url=f"{self.endpoint}/_health",
            what="the OTLP receiver",
            timeout=timeout,
        )
        return self

    def spans(self) -> list[dict[str, Any]]:
        path = self.root / "spans.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line]

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
