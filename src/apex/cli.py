"""The `apex` command."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from apex import __version__
from apex.settings import Settings, SettingsError, load_settings

app = typer.Typer(
    help="Apex: find the waste in LLM spend and prove the savings.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
migrate_app = typer.Typer(help="Database schema migrations (Alembic).", no_args_is_help=True)
app.add_typer(migrate_app, name="migrate")
keys_app = typer.Typer(help="Token signing keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
console = Console(stderr=True, soft_wrap=True)


def _fail(message: str, code: int) -> NoReturn:
    console.print(message, style="red", highlight=False, markup=False)
    raise typer.Exit(code)


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        _fail(str(exc), 2)


@contextmanager
def _migration_errors(settings: Settings) -> Iterator[None]:
    """Report a failed migration in one line and exit 1 (the revision's transaction rolled back)."""
    try:
        yield
    except Exception as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        _fail(
            f"Migration failed on {settings.safe_database_url()}: {type(exc).__name__}: {reason}", 1
        )


@app.command()
def version() -> None:
    """Print Apex's version."""
    typer.echo(__version__)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address [env APEX_HOST].")] = None,
    port: Annotated[int | None, typer.Option(help="Port [env APEX_PORT].")] = None,
    workers: Annotated[
        int | None, typer.Option(help="Worker processes [env APEX_WORKERS].")
    ] = None,
) -> None:
    """Run the HTTP and WebSocket server."""
    import uvicorn

    settings = _settings()
    uvicorn.run(
        "apex.app:create_app_from_env",
        factory=True,
        host=host or settings.host,
        port=settings.port if port is None else port,
        workers=workers or settings.workers,
        log_config=None,
        proxy_headers=True,
        lifespan="on",
        timeout_graceful_shutdown=10,
    )


@app.command()
def health(
    url: Annotated[str, typer.Option(help="Base URL of a running Apex.")] = "http://127.0.0.1:8000",
    wait: Annotated[float, typer.Option(help="Seconds to wait for it to become ready.")] = 0,
) -> None:
    """Show a running Apex's readiness, check by check (exit 1 when not ready)."""
    import time

    import httpx
    from rich.table import Table

    deadline = time.monotonic() + wait
    while True:
        try:
            response = httpx.get(f"{url}/health/ready", timeout=10)
            if response.status_code == 200 or time.monotonic() >= deadline:
                break
        except httpx.HTTPError as exc:
            if time.monotonic() >= deadline:
                _fail(f"No answer from {url}: {exc}", 1)
        time.sleep(0.2)
    body = response.json()
    table = Table(title=f"Apex {body['version']} at {url}: {body['status'].upper()}")
    for column in ("check", "status", "latency ms", "critical", "detail"):
        table.add_column(column)
    for check in body["checks"]:
        details = check["details"] or {}
        detail = check["error"] or ", ".join(f"{k}={v}" for k, v in details.items())
        colour = "green" if check["status"] == "ok" else "red"
        table.add_row(
            check["name"],
            f"[{colour}]{check['status']}[/{colour}]",
            f"{check['latency_ms']:.1f}",
            "yes" if check["critical"] else "no",
            detail,
        )
    Console().print(table)
    if response.status_code != 200:
        raise typer.Exit(1)


@migrate_app.command("upgrade")
def migrate_upgrade(revision: Annotated[str, typer.Argument()] = "heads") -> None:
    """Upgrade the schema to REVISION (default: every head)."""
    from apex.migrations import runner

    settings = _settings()
    with _migration_errors(settings), console.status(f"Upgrading to {revision}…"):
        runner.upgrade(settings, revision)
    console.print(f"[green]At revision:[/green] {runner.current(settings) or 'base'}")


@migrate_app.command("downgrade")
def migrate_downgrade(
    revision: Annotated[str, typer.Argument(help="Target, e.g. -1 or base.")],
) -> None:
    """Downgrade the schema to REVISION."""
    from apex.migrations import runner

    settings = _settings()
    with _migration_errors(settings), console.status(f"Downgrading to {revision}…"):
        runner.downgrade(settings, revision)
    console.print(f"[green]At revision:[/green] {runner.current(settings) or 'base'}")


@migrate_app.command("current")
def migrate_current() -> None:
    """Print the revision the database is at."""
    from apex.migrations import runner

    settings = _settings()
    with _migration_errors(settings):
        typer.echo(runner.current(settings) or "base")


@migrate_app.command("history")
def migrate_history() -> None:
    """List the revisions, newest first."""
    from apex.migrations import runner

    settings = _settings()
    with _migration_errors(settings):
        typer.echo(runner.history(settings))


@keys_app.command("rotate")
def keys_rotate() -> None:
    """Start signing with a new key; the old one verifies for APEX_SIGNING_KEY_OVERLAP_SECONDS."""
    import asyncio

    from apex.identity.keys import KeyRing
    from apex.kit.clock import SystemClock
    from apex.kit.db import Database

    settings = _settings()
    if settings.secret_key is None:
        _fail("APEX_SECRET_KEY must be set: keys are stored encrypted with it.", 2)

    async def rotate() -> str:
        database = Database(settings)
        try:
            ring = KeyRing(
                database,
                secret=settings.signing_secret,
                clock=SystemClock(),
                overlap_seconds=settings.signing_key_overlap_seconds,
            )
            return await ring.rotate()
        finally:
            await database.dispose()

    kid = asyncio.run(rotate())
    console.print(f"[green]Signing with key[/green] {kid}")


@app.command()
def ingest(
    file: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, readable=True, help=".jsonl or .csv")
    ],
    org: Annotated[str, typer.Option(help="The organisation's slug.")],
    batch_size: Annotated[int, typer.Option(min=1, max=1000)] = 1000,
) -> None:
    """Import usage records from a JSONL or CSV file (resumable; record ids make it exact)."""
    import asyncio

    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

    from apex.identity.repository import OrganizationRepository
    from apex.kit.db import Database
    from apex.usage.files import FileFormatError, FileIngestResult, ingest_file

    settings = _settings()

    async def run(progress: Progress) -> FileIngestResult:
        database = Database(settings)
        try:
            async with database.unit_of_work() as session:
                organization = await OrganizationRepository(session).by_slug(org)
            if organization is None:
                _fail(f"No organisation with slug {org!r}.", 2)
            task = progress.add_task(f"Ingesting {file.name}", total=None)
            return await ingest_file(
                database,
                organization.id,
                file,
                batch_size=batch_size,
                progress=lambda done, total: progress.update(task, completed=done, total=total),
            )
        finally:
            await database.dispose()

    columns = (
        *Progress.get_default_columns()[:1],
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
    )
    try:
        with Progress(*columns, console=console) as progress:
            result = asyncio.run(run(progress))
    except FileFormatError as exc:
        _fail(f"{file}: {exc} (earlier batches are stored: fix it and run again to resume)", 1)
    if result.resumed_from_line:
        console.print(f"Resumed after line {result.resumed_from_line}.")
    console.print(
        f"[green]{result.accepted} accepted[/green], {result.duplicates} duplicates, "
        f"[red]{result.rejected} rejected[/red] ({result.lines} lines)."
    )
    for line, problem in result.problems:
        reasons = "; ".join(f"{p.field}: {p.reason}" for p in problem.errors)
        console.print(f"  line {line} ({problem.id or 'no id'}): {reasons}", markup=False)
    if result.rejected:
        raise typer.Exit(1)


def main() -> None:
    app()
