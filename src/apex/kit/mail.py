"""Outgoing mail, injectable like every collaborator of the outside world.

- `SmtpMailer`: SMTP through aiosmtplib (`APEX_SMTP_URL=smtp://user:pass@host:587`, or
  `smtps://` for implicit TLS; `smtp://` upgrades with STARTTLS when the server offers it).
- `FileMailer`: the embedded default; each mail is written to `APEX_DATA_DIR/mail/` as an
  `.eml` file and logged (recipient and subject, never the body: it may carry a token).

Mail is sent after the transaction that decided it commits (`send_after_commit`), so a
rolled-back change mails nobody, and outside the request: how long a mail server takes
must not tell a caller which mail was sent (sign-up answers the same for known and new
addresses). Shutdown waits for mails in flight (`drain`). A mail that cannot be sent is
logged as an error.
"""

from __future__ import annotations

import asyncio
import uuid
from email.message import EmailMessage
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from apex.kit.db import call_after_commit
from apex.settings import Settings

log = structlog.get_logger(__name__)


class Mailer(Protocol):
    async def send(self, to: str, subject: str, text: str) -> None: ...


def message(sender: str, to: str, subject: str, text: str) -> EmailMessage:
    mail = EmailMessage()
    mail["From"], mail["To"], mail["Subject"] = sender, to, subject
    mail["Message-ID"] = f"<{uuid.uuid4().hex}@apex>"
    mail.set_content(text)
    return mail


class SmtpMailer:
    def __init__(self, url: str, sender: str, *, timeout: float = 10) -> None:
        parts = urlsplit(url)
        self.hostname = parts.hostname or "localhost"
        self.implicit_tls = parts.scheme == "smtps"
        self.port = parts.port or (465 if self.implicit_tls else 25)
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        self.sender = sender
        self.timeout = timeout

    async def send(self, to: str, subject: str, text: str) -> None:
        import aiosmtplib  # the client is needed only where mail goes out by SMTP

        await aiosmtplib.send(
            message(self.sender, to, subject, text),
            hostname=self.hostname,
            port=self.port,
            username=self.username,
            password=self.password,
            use_tls=self.implicit_tls,
            start_tls=None if not self.implicit_tls else False,
            timeout=self.timeout,
        )
        log.info("mail_sent", to=to, subject=subject)

    async def probe(self) -> None:
        """Connect, read the server's greeting, and leave (the readiness check of mail)."""
        import aiosmtplib

        client = aiosmtplib.SMTP(
            hostname=self.hostname,
            port=self.port,
            use_tls=self.implicit_tls,
            start_tls=False,
            timeout=self.timeout,
        )
        await client.connect()
        await client.quit()


class FileMailer:
    def __init__(self, directory: Path, sender: str) -> None:
        self.directory = directory
        self.sender = sender

    async def send(self, to: str, subject: str, text: str) -> None:
        mail = message(self.sender, to, subject, text)
        path = self.directory / f"{uuid.uuid4().hex}.eml"

        def write() -> None:
            self.directory.mkdir(parents=True, exist_ok=True)
            path.write_bytes(bytes(mail))

        await asyncio.to_thread(write)
        log.info("mail_written", to=to, subject=subject, path=str(path))


def create_mailer(settings: Settings) -> Mailer:
    if settings.smtp_url is None:
        return FileMailer(settings.data_dir / "mail", settings.mail_from)
    return SmtpMailer(settings.smtp_url.get_secret_value(), settings.mail_from)


_in_flight: set[asyncio.Task[None]] = set()


def send_after_commit(
    session: AsyncSession, mailer: Mailer, to: str, subject: str, text: str
) -> None:
    """Send once the session's transaction has committed (never on rollback), in the
    background."""

    async def send() -> None:
        try:
            await mailer.send(to, subject, text)
        except Exception as exc:
            log.error("mail_failed", to=to, subject=subject, error=type(exc).__name__)

    async def start() -> None:
        task = asyncio.create_task(send())
        _in_flight.add(task)
        task.add_done_callback(_in_flight.discard)

    call_after_commit(session, start)


async def drain(wait_seconds: float = 10) -> None:
    """Wait (up to `wait_seconds`) for the mails still being sent."""
    if _in_flight:
        _, late = await asyncio.wait(set(_in_flight), timeout=wait_seconds)
        for task in late:
            task.cancel()
        if late:
            log.error("mail_abandoned", count=len(late))
