"""Start the local OpenID Connect provider (tests/harness/oidc_provider.py) as a process."""

from __future__ import annotations

import shutil

import httpx

from tests.harness.procs import (
    ServiceProcess,
    free_port,
    make_workdir,
    start_python_server,
)


class OidcProvider(ServiceProcess):
    def __init__(self, *, client_id: str, client_secret: str, redirect_uri: str) -> None:
        super().__init__()
        self.root = make_workdir("oidc")
        self.port = free_port()
        self.client_id, self.client_secret, self.redirect_uri = (
            client_id,
            client_secret,
            redirect_uri,
        )
        self.log_path = self.root / "oidc.log"

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20) -> OidcProvider:
        self.process = start_python_server(
            "tests.harness.oidc_provider",
            ["--port", str(self.port), "--client-id", self.client_id,
             "--client-secret", self.client_secret, "--redirect-uri", self.redirect_uri],
            root=self.root,
            log_path=self.log_path,
            ready_url=f"{self.issuer}/.well-known/openid-configuration",
            what="the OIDC provider",
            timeout=timeout,
        )  # fmt: skip
        return self

    def script(self, **behaviour: object) -> None:
        httpx.post(f"{self.issuer}/_script", json=behaviour, timeout=5).raise_for_status()

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self.root, ignore_errors=True)
