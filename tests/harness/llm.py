"""Start the local OpenAI-compatible server (tests/harness/llm_server.py) as a process."""

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


class LlmServer(ServiceProcess):
    def __init__(self) -> None:
        super().__init__()
        self.root = make_workdir("llm")
        self.port = free_port()
        self.log_path = self.root / "llm.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """What an OpenAI client takes as base_url."""
        return f"{self.url}/v1"

    def start(self, timeout: float = 20) -> LlmServer:
        self.process = start_python_server(
            "tests.harness.llm_server",
            ["--port", str(self.port)],
            root=self.root,
            log_path=self.log_path,
            ready_url=f"{self.url}/_health",
            what="the LLM server",
            timeout=timeout,
        )
        return self

    def script(self, *behaviours: dict[str, Any]) -> None:
        httpx.post(f"{self.url}/_script", json=list(behaviours), timeout=5).raise_for_status()

    def requests(self) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}/_requests", timeout=5)
        response.raise_for_status()
        log: list[dict[str, Any]] = response.json()
        return log

    def reset(self) -> None:
        httpx.post(f"{self.url}/_reset", timeout=5).raise_for_status()

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self.root, ignore_errors=True)
