"""A real SMTP server (aiosmtpd, in a process of its own) that keeps every mail it receives
in a Maildir, for tests of what Apex sends."""

from __future__ import annotations

import mailbox
import re
import sys
import time
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

    def keys(self) -> set[str]:
        """The Maildir keys of the mails received so far (to tell later ones apart)."""
        if not self.maildir.exists():
            return set()
        return set(mailbox.Maildir(str(self.maildir), create=False).keys())

    def mails_since(self, seen: set[str]) -> list[tuple[str, Message]]:
        """The mails received that are not among `seen`, oldest key first."""
        if not self.maildir.exists():
            return []
        box = mailbox.Maildir(str(self.maildir), create=False)
        return [(key, box[key]) for key in sorted(set(box.keys()) - seen)]

    def next_mail(
        self, to: str, *, seen: set[str], subject: str = "", timeout: float = 30
    ) -> Message:
        """The first mail to `to` (whose subject contains `subject`) that is not among
        `seen`, waiting for it to arrive."""
        deadline = time.monotonic() + timeout
        while True:
            for _, mail in self.mails_since(seen):
                if mail["To"] == to and subject in str(mail["Subject"]):
                    return mail
            if time.monotonic() > deadline:
                raise HarnessError(f"no mail to {to} arrived within {timeout} s")
            time.sleep(0.02)


def token_in(mail: Message) -> str:
    """The token a verification, reset or invitation mail carries."""
    body = mail.get_payload(decode=True)
    text = body.decode() if isinstance(body, bytes) else str(mail.get_payload())
    found = re.search(r'"token": "([A-Za-z0-9_-]{20,})"', text)
    if found is None:
        raise HarnessError(f"no token in the mail:\n{text}")
    return found.group(1)
