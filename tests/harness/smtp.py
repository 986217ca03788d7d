"""A real SMTP server (aiosmtpd, in a process of its own) that keeps every mail it receives
in a Maildir, for tests of what Apex sends."""

from __future__ import annotations

import mailbox
import sys
from email.message import Message

from tests.harness.procs import (
    HarnessError,
    ManagedProcess,
    ServiceProcess,
    free_port,
    make_workdir,
    tail,
    wait_for_port,
)


class SmtpServer(ServiceProcess):
    def __init__(self) -> None:
        super().__init__()
        self.port = free_port()
        self.workdir = make_workdir("smtp")
        self.maildir = self.workdir / "Maildir"

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15) -> SmtpServer:
        argv = [sys.executable, "-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{self.port}",
                "-c", "aiosmtpd.handlers.Mailbox", str(self.maildir)]  # fmt: skip
        log = self.workdir / "smtp.log"
        self.process = ManagedProcess(argv, log_path=log, cwd=self.workdir)
        if not wait_for_port(self.port, timeout):
            raise HarnessError(f"the SMTP server did not listen:\n{tail(log)}")
        return self

    def messages(self) -> list[Message]:
        """Every mail received so far."""
        if not self.maildir.exists():
            return []
        return list(mailbox.Maildir(str(self.maildir), create=False))
