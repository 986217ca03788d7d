"""A real `apex serve` subprocess with given settings, waited on until it is ready."""

from __future__ import annotations

import os
import sys
import time

import httpx

from tests.harness.procs import (
    HarnessError,
    ManagedProcess,
    ServiceProcess,
    free_port,
    make_workdir,
    tail,
)


class ApexServer(ServiceProcess):
    """`python -m apex serve` on a free port. `env` holds APEX_* settings for it alone."""

    def __init__(self, env: dict[str, str], *, name: str = "apex") -> None:
        super().__init__()
        self.root = make_workdir(name)
        self.log_path = self.root / "apex.log"
        self.port = free_port()
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("APEX_")},
            "APEX_DATA_DIR": str(self.root / "data"),
            "APEX_LOG_LEVEL": "INFO",
            **env,
        }

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, **kwargs: object) -> httpx.Client:
        kwargs.setdefault("timeout", 10)
        return httpx.Client(base_url=self.base_url, **kwargs)  # type: ignore[arg-type]

    def start(self, timeout: float = 30) -> ApexServer:
        self.process = ManagedProcess(
            [
                sys.executable,
                "-m",
                "apex",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            log_path=self.log_path,
            cwd=self.root,
            env=self.env,
        )
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30) -> None:
        """Wait for `/health/ready` to answer 200; fail with the server's log if it never does."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.process is None or not self.process.alive():
                raise HarnessError(
                    f"apex serve exited during start-up. Log tail:\n{tail(self.log_path)}"
                )
            try:
                response = httpx.get(f"{self.base_url}/health/ready", timeout=2)
                if response.status_code == 200:
                    return
                last = f"{response.status_code} {response.text[:300]}"
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(0.05)
        raise HarnessError(
            f"apex serve not ready in {timeout}s ({last}). Log tail:\n{tail(self.log_path)}"
        )

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class ApexWorker(ServiceProcess):
    """`python -m apex worker` with the given settings; ready once it logs `worker_started`."""

    def __init__(self, env: dict[str, str], *, name: str = "worker") -> None:
        super().__init__()
        self.root = make_workdir(name)
        self.log_path = self.root / "worker.log"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("APEX_")},
            "APEX_DATA_DIR": str(self.root / "data"),
            "APEX_LOG_LEVEL": "INFO",
            **env,
        }

    def start(self, timeout: float = 30) -> ApexWorker:
        self.process = ManagedProcess(
            [sys.executable, "-m", "apex", "worker", "--concurrency", "4"],
            log_path=self.log_path,
            cwd=self.root,
            env=self.env,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.process.alive():
                raise HarnessError(f"apex worker exited at start. Log tail:\n{tail(self.log_path)}")
            if "worker_started" in self.logs():
                return self
            time.sleep(0.05)
        raise HarnessError(f"apex worker not started in {timeout}s:\n{tail(self.log_path)}")

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
