"""A real nginx in front of `apex serve` instances, from a configuration file (by default
the production one in deploy/), with the listen port and upstream servers replaced."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from tests.harness.procs import (
    REPO,
    HarnessError,
    ManagedProcess,
    ServiceProcess,
    free_port,
    make_workdir,
    tail,
    wait_for_port,
)

PRODUCTION_CONFIG = REPO / "deploy" / "nginx.conf"


def nginx_binary() -> str:
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if found is None:
        raise HarnessError("nginx is not installed (Debian package nginx; ./run test installs it)")
    return found


class NginxServer(ServiceProcess):
    def __init__(
        self,
        upstreams: list[int],
        *,
        config: Path = PRODUCTION_CONFIG,
        replace: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.port = free_port()
        self.workdir = make_workdir("nginx")
        (self.workdir / "logs").mkdir()
        text = config.read_text()
        text = re.sub(r"listen \d+;", f"listen 127.0.0.1:{self.port};", text)
        servers = "".join(f"        server 127.0.0.1:{port};\n" for port in upstreams)
        text = re.sub(r"(upstream apex \{\n(?:\s*least_conn;\n)?)(\s*server [^\n]*\n)+",
                      lambda m: m.group(1) + servers, text)  # fmt: skip
        text = text.replace("worker_processes auto;", "worker_processes 1;")
        for old, new in (replace or {}).items():
            if old not in text:
                raise HarnessError(f"nginx config has no {old!r} to replace")
            text = text.replace(old, new)
        self.config = self.workdir / "nginx.conf"
        self.config.write_text(text)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10) -> NginxServer:
        argv = [nginx_binary(), "-p", str(self.workdir), "-c", str(self.config),
                "-g", "daemon off;"]  # fmt: skip
        self.process = ManagedProcess(argv, log_path=self.workdir / "stdout.log", cwd=self.workdir)
        if not wait_for_port(self.port, timeout):
            raise HarnessError(f"nginx did not listen:\n{tail(self.workdir / 'logs/error.log')}")
        return self
