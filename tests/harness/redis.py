"""Throwaway redis-server processes: start, stop, kill -9, restart on the same port."""

from __future__ import annotations

import shutil
import socket

from tests.harness.procs import (
    HarnessError,
    ManagedProcess,
    ServiceProcess,
    free_port,
    make_workdir,
    tail,
    wait_until,
)


def _server_pid(port: int) -> int | None:
    """The process id the server on `port` reports (INFO server), or None if none answers."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"INFO server\r\n")
            reply = b""
            while b"process_id:" not in reply or not reply.endswith(b"\r\n\r\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                reply += chunk
    except OSError:
        return None
    for line in reply.decode(errors="replace").splitlines():
        if line.startswith("process_id:"):
            return int(line.split(":", 1)[1])
    return None


class RedisServer(ServiceProcess):
    """One redis-server, persistence off, `DEBUG` allowed from loopback."""

    def __init__(self, *, port: int | None = None) -> None:
        super().__init__()
        binary = shutil.which("redis-server")
        if binary is None:
            raise HarnessError("redis-server is not installed (Debian package redis-server)")
        self.binary = binary
        self.root = make_workdir("redis")
        self.log_path = self.root / "redis.log"
        self.port = port or free_port()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15) -> RedisServer:
        if self.running:
            raise HarnessError(f"redis-server on port {self.port} is already running")
        self.process = ManagedProcess(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.root),
                "--daemonize",
                "no",
                "--enable-debug-command",
                "local",
                "--protected-mode",
                "no",
            ],
            log_path=self.log_path,
            cwd=self.root,
        )
        process = self.process
        # Ours must answer, not another server already holding the port.
        if not wait_until(lambda: _server_pid(self.port) == process.pid, timeout):
            process.kill()
            raise HarnessError(
                f"redis-server did not answer on port {self.port} within {timeout}s."
                f" Log tail:\n{tail(self.log_path)}"
            )
        return self

    def restart(self) -> RedisServer:
        self.stop()
        return self.start()

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
