"""The `apex` command."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import structlog
import typer
from rich.console import Console

from apex import __version__
from apex.settings import Settings, SettingsError, load_settings
from apex.usage.schemas import MAX_BATCH

if TYPE_CHECKING:
    import uuid

    from apex.kit.db import Database
    from apex.usage.files import FileIngestResult
    from apex.usage.pricing import Catalogue, ModelPrice

app = typer.Typer(
    help="Apex: find the waste in LLM spend and prove the savings.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
migrate_app = typer.Typer(help="Database schema migrations (Alembic).", no_args_is_help=True)
app.add_typer(migrate_app, name="migrate")
keys_app = typer.Typer(help="Token signing keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
pricing_app = typer.Typer(
    help="The pricing catalogue and organisations' prices.", no_args_is_help=True
)
app.add_typer(pricing_app, name="pricing")
usage_app = typer.Typer(help="Usage records and their rollups.", no_args_is_help=True)
app.add_typer(usage_app, name="usage")
billing_app = typer.Typer(help="Subscriptions and invoices.", no_args_is_help=True)
app.add_typer(billing_app, name="billing")
console = Console(stderr=True, soft_wrap=True)
MAINTENANCE_TIMEOUT_S = 6 * 3600.0  # statements of maintenance commands (rebuilds)


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

    # The app (built in each worker from the environment) knows where it listens.
    for name, value in (("HOST", host), ("PORT", port), ("WORKERS", workers)):
        if value is not None:
            os.environ[f"APEX_{name}"] = str(value)
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
        timeout_keep_alive=settings.http_keepalive_seconds,
        # WebSocket heartbeat: a ping every 30 s (default); a peer silent 30 s more is dropped.
        ws_ping_interval=settings.websocket_ping_seconds,
        ws_ping_timeout=settings.websocket_ping_seconds,
        ws_max_size=64 * 1024,  # the gateway's frame limit (realtime.protocol.MAX_FRAME_BYTES)
        ws_per_message_deflate=settings.websocket_compression,
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
    for column in ("check", "status", "since", "latency ms", "critical", "detail"):
        table.add_column(column)
    for check in body["checks"]:
        details = check["details"] or {}
        detail = check["error"] or ", ".join(f"{k}={v}" for k, v in details.items())
        colour = "green" if check["status"] == "ok" else "red" if check["critical"] else "yellow"
        table.add_row(
            check["name"],
            f"[{colour}]{check['status']}[/{colour}]",
            (check.get("since") or "")[:19].replace("T", " "),
            f"{check['latency_ms']:.1f}",
            "yes" if check["critical"] else "no (degrades)",
            detail,
        )
    console = Console()
    console.print(table)
    for reason in body.get("reasons", []):
        console.print(f"- {reason}", markup=False)
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
    org: Annotated[
        str | None, typer.Option(help="The organisation's slug (straight into the database).")
    ] = None,
    url: Annotated[
        str | None,
        typer.Option(
            help="A running Apex to stream the file to instead (its import endpoint); the "
            "API key is read from APEX_API_KEY (never from the command line)."
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, max=MAX_BATCH)] = 5000,
    restart: Annotated[
        bool, typer.Option(help="Send the whole file again (ignore the checkpoint).")
    ] = False,
) -> None:
    """Import usage records from a JSONL or CSV file: into the database (--org; resumable),
    or through a server (--url). Record ids make either exact when run again."""
    import asyncio

    if url is not None:
        _ingest_through(url, file)
        return
    if org is None:
        _fail("Say where the records go: --org SLUG (the database) or --url URL (a server).", 2)

    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

    from apex.kit.db import Database
    from apex.kit.failpoints import Failpoints
    from apex.kit.heap import freeze_startup_heap
    from apex.usage.files import FileFormatError, ingest_file

    settings = _settings()

    async def run(progress: Progress) -> FileIngestResult:
        database = Database(settings)
        try:
            organization_id = await _organization_id(database, org)
            freeze_startup_heap()
            task = progress.add_task(f"Ingesting {file.name}", total=None)
            return await ingest_file(
                database,
                organization_id,
                file,
                batch_size=batch_size,
                progress=lambda done, total: progress.update(task, completed=done, total=total),
                restart=restart,
                failpoints=Failpoints(settings.failpoints),
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
    if result.already_finished:
        _report_finished_file(result)
        return
    if result.resumed_from_line:
        console.print(f"Resumed after line {result.resumed_from_line}.")
    console.print(
        f"[green]{result.accepted:,} accepted[/green], {result.duplicates:,} duplicates "
        f"(already stored), [red]{result.rejected:,} rejected[/red] ({result.lines:,} lines)."
    )
    if result.warnings:
        console.print(f"[yellow]{result.warnings:,} stored with a warning[/yellow].")
    for line, problem in result.problems:
        reasons = "; ".join(f"{p.field}: {p.reason}" for p in problem.errors + problem.warnings)
        console.print(f"  line {line} ({problem.id or 'no id'}): {reasons}", markup=False)
    if result.rejected:
        raise typer.Exit(1)


@usage_app.command("rebuild-rollups")
def usage_rebuild_rollups(
    org: Annotated[
        str | None, typer.Option(help="One organisation's slug (default: every organisation).")
    ] = None,
) -> None:
    """Recompute the usage rollups from the raw records, each organisation in one transaction
    (ingestion keeps them current; this is for repairs and for data loaded around Apex)."""
    import asyncio
    import time

    from apex.identity.repository import OrganizationRepository
    from apex.kit.db import Database
    from apex.usage.rollups import RollupRepository

    # One statement per table reads every record of an organisation: no request timeout.
    settings = _settings().model_copy(update={"db_command_timeout": MAINTENANCE_TIMEOUT_S})

    async def rebuild() -> tuple[int, int]:
        database = Database(settings)
        try:
            if org is not None:
                organizations = [await _organization_id(database, org)]
            else:
                async with database.unit_of_work() as session:
                    organizations = await OrganizationRepository(session).all_ids()
            records = 0
            for organization_id in organizations:
                async with database.unit_of_work(primary=True) as session:
                    records += await RollupRepository(session).rebuild(organization_id)
            return len(organizations), records
        finally:
            await database.dispose()

    started = time.perf_counter()
    organizations, records = asyncio.run(rebuild())
    console.print(
        f"Rebuilt the rollups of {organizations:,} organisation(s) from {records:,} records "
        f"in {time.perf_counter() - started:.1f} s."
    )


@billing_app.command("cycle")
def billing_cycle(
    at: Annotated[
        datetime | None,
        typer.Option(
            help="Run as of this UTC time instead of now (rehearsals; refused in production)."
        ),
    ] = None,
) -> None:
    """Close every billing period that has ended (renewals, trial ends, scheduled
    downgrades and cancellations) and collect every invoice that is due (the worker does
    this every APEX_BILLING_CYCLE_SECONDS)."""
    import asyncio
    from datetime import UTC

    from apex.billing.collection import CycleReport, run_cycle
    from apex.billing.feed import RevenueFeed
    from apex.billing.gateway import build_gateway
    from apex.kit.cache import TwoLevelCache
    from apex.kit.channels import Channels
    from apex.kit.clock import Clock, FrozenClock, SystemClock
    from apex.kit.db import Database
    from apex.kit.failpoints import Failpoints
    from apex.kit.mail import create_mailer, drain
    from apex.kit.redis import create_redis

    settings = _settings()
    if at is not None and settings.environment == "production":
        _fail("--at is for rehearsals: production bills as of now.", 2)
    clock: Clock = FrozenClock(at.replace(tzinfo=at.tzinfo or UTC)) if at else SystemClock()

    async def run() -> CycleReport:
        database = Database(settings)
        redis = create_redis(settings)
        # Plan changes are seen by every `apex serve` at once (their cached organisations),
        # and by operators following the revenue feed.
        database.after_commit(TwoLevelCache(redis).after_commit)
        database.after_commit(RevenueFeed(Channels(redis)).after_commit)
        try:
            return await run_cycle(
                database, build_gateway(settings), clock, tax_rate=settings.billing_tax_rate,
                failpoints=Failpoints(settings.failpoints), mailer=create_mailer(settings),
            )  # fmt: skip
        finally:
            await drain()
            await redis.aclose()
            await database.dispose()

    report = asyncio.run(run())
    console.print(
        f"Findings decided: {report.findings_decided}. "
        f"Periods closed: {report.periods_closed}. Invoices collected: {report.collected}."
    )


@usage_app.command("maintain")
def maintain_usage() -> None:
    """Create the coming months' usage partitions and apply every plan's retention now (the
    worker does this every APEX_USAGE_MAINTENANCE_SECONDS)."""
    import asyncio

    from apex.kit.clock import SystemClock
    from apex.kit.db import Database
    from apex.usage.maintenance import MaintenanceReport, maintain

    settings = _settings().model_copy(update={"db_command_timeout": MAINTENANCE_TIMEOUT_S})

    async def run() -> MaintenanceReport:
        database = Database(settings)
        try:
            return await maintain(database, SystemClock().now())
        finally:
            await database.dispose()

    report = asyncio.run(run())
    if report.skipped:
        console.print("Another process is maintaining the usage tables; nothing done.")
        return
    console.print(
        f"Partitions created: {', '.join(report.created) or 'none'}. "
        f"Dropped: {', '.join(report.dropped) or 'none'}. "
        f"Records deleted outside partitions: {report.deleted:,}. "
        f"Rollups recomputed for {report.recomputed:,} organisation-month(s)."
    )


def _ingest_through(url: str, file: Path) -> None:
    """`apex ingest FILE --url URL`: stream the file to the server's import endpoint."""
    import os

    import httpx

    from apex.usage.files import FileFormatError, RemoteRefused, upload_file

    api_key = os.environ.get("APEX_API_KEY", "")
    if not api_key:
        _fail("Set APEX_API_KEY to an API key with the usage:write permission.", 2)
    try:
        with console.status(f"Streaming {file.name} to {url}…"):
            result = upload_file(url, api_key, file)
    except FileFormatError as exc:
        _fail(f"{file}: {exc} (what was sent before is stored: fix it and run again)", 1)
    except RemoteRefused as exc:
        _fail(f"{url}: {exc}", 1)
    except httpx.HTTPError as exc:
        _fail(f"{url}: {type(exc).__name__}: {exc} (run again: stored records count as "
              "duplicates)", 1)  # fmt: skip
    summary = result.summary
    console.print(
        f"[green]{summary['accepted']:,} accepted[/green], {summary['duplicates']:,} "
        f"duplicates (already stored), [red]{summary['rejected']:,} rejected[/red] "
        f"({summary['lines']:,} lines; import {summary['id']})."
    )
    for problem in result.problems[:100]:
        reasons = "; ".join(
            f"{p['field']}: {p['reason']}" for p in problem["errors"] + problem["warnings"]
        )
        console.print(f"  line {problem['line']} ({problem.get('id') or 'no id'}): {reasons}",
                      markup=False)  # fmt: skip
    if summary["rejected"]:
        raise typer.Exit(1)


def _report_finished_file(result: FileIngestResult) -> None:
    """A file ingested to its end before: say what the store holds of it."""
    records, stored = result.records_in_file, result.already_stored
    if stored == records:
        console.print(f"This file was ingested before: {records:,} records, all already stored.")
    else:
        console.print(
            f"This file was ingested before: {records:,} records, {stored:,} already stored, "
            f"{records - stored:,} not in the store (rejected when it was sent, or removed "
            "since: retention, or a store restored from a backup). Run with --restart to send it "
            "again: what is stored counts as duplicates, the rest gets its verdict."
        )


@app.command()
def worker(
    concurrency: Annotated[int, typer.Option(min=1, max=100, help="Jobs run at once.")] = 4,
) -> None:
    """Take jobs (agent run steps, invoice collections) from the Redis queue until SIGTERM or
    SIGINT; maintain the usage tables and run the billing cycle meanwhile."""
    import asyncio
    import signal

    from apex.agents.runner import build_runtime
    from apex.agents.tasks import register_agent_tasks
    from apex.alerts.tasks import keep_alerting
    from apex.billing.collection import keep_billing
    from apex.billing.feed import RevenueFeed
    from apex.billing.gateway import build_gateway
    from apex.billing.tasks import BillingRuntime, register_billing_tasks
    from apex.kit.cache import TwoLevelCache
    from apex.kit.channels import Channels
    from apex.kit.clock import SystemClock
    from apex.kit.db import Database
    from apex.kit.failpoints import Failpoints
    from apex.kit.heap import freeze_startup_heap
    from apex.kit.mail import create_mailer
    from apex.kit.mail import drain as drain_mail
    from apex.kit.queue import JobQueue, WorkerRegistry, serve_jobs
    from apex.kit.redis import create_redis
    from apex.observability.logging import configure_logging
    from apex.observability.logstore import LogShipper
    from apex.observability.metrics import Metrics, observe_worker, serve_metrics
    from apex.observability.tracing import configure_tracing, shutdown_tracing
    from apex.usage.maintenance import keep_maintaining

    settings = _settings()
    if settings.redis_url is None:
        _fail("apex worker needs APEX_REDIS_URL (the embedded default runs jobs in-process).", 2)
    configure_logging(settings.log_level, settings.log_format, service="apex-worker")
    configure_tracing("apex-worker")

    async def run() -> None:
        shipper = LogShipper.from_settings(settings)
        database = Database(settings)
        redis = create_redis(settings)
        # What this process changes (plans, at a billing period's end) is seen at once by
        # every `apex serve` (their cached copies are invalidated after each commit) and by
        # operators following the revenue feed.
        database.after_commit(TwoLevelCache(redis).after_commit)
        database.after_commit(RevenueFeed(Channels(redis)).after_commit)
        runtime = build_runtime(
            settings, database, redis, SystemClock(), Failpoints(settings.failpoints)
        )
        metrics = Metrics("apex-worker")
        serve_metrics(metrics, database, settings.worker_metrics_host, settings.worker_metrics_port)
        queue = JobQueue(settings, metrics)
        register_agent_tasks(queue, runtime)
        payments = build_gateway(settings)
        failpoints = Failpoints(settings.failpoints)
        mailer = create_mailer(settings)
        billing_runtime = BillingRuntime(database, payments, SystemClock(), failpoints, mailer)
        register_billing_tasks(queue, billing_runtime)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        structlog.get_logger("apex.worker").info("worker_started", concurrency=concurrency)
        freeze_startup_heap()
        maintenance = asyncio.create_task(
            keep_maintaining(database, SystemClock(), settings.usage_maintenance_seconds, stop)
        )
        billing = asyncio.create_task(
            keep_billing(
                database, payments, SystemClock(), settings.billing_cycle_seconds, stop,
                tax_rate=settings.billing_tax_rate, mailer=mailer,
            )
        )  # fmt: skip
        registry = WorkerRegistry(redis, settings, SystemClock())
        observe_worker(metrics, registry, runtime.llm)
        runtime.llm.metrics = metrics
        heartbeat = asyncio.create_task(registry.keep_beating(stop))
        alerting = asyncio.create_task(
            keep_alerting(database, SystemClock(), mailer, settings, stop)
        )
        try:
            await serve_jobs(queue, stop, concurrency=concurrency)
        finally:
            stop.set()
            await maintenance
            await billing
            await heartbeat
            await alerting
            await drain_mail()
            await queue.broker.shutdown()
            await redis.aclose()
            await database.dispose()
            structlog.get_logger("apex.worker").info("worker_stopped")
            shutdown_tracing()
            if shipper is not None:
                await shipper.uninstall()

    asyncio.run(run())


@app.command()
def demo(
    seed: Annotated[int, typer.Option(help="Seed of the generated month.")] = 7,
) -> None:
    """Apex's main job in one command: a demo organisation, a month of usage, a full agent
    run, and the report (on the embedded default unless APEX_* settings say otherwise)."""
    import asyncio
    from decimal import Decimal

    from rich.markdown import Markdown
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
    from rich.table import Table

    from apex.agents.pipeline import coverage_lines
    from apex.demo import DEMO_EMAIL, projected_bill, run_demo
    from apex.migrations import runner

    settings = _settings()
    out = Console(soft_wrap=True)
    with _migration_errors(settings):
        runner.upgrade(settings)
    columns = (
        *Progress.get_default_columns()[:1],
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("Generating and ingesting a month of usage", total=None)
        result = asyncio.run(
            run_demo(
                settings,
                seed=seed,
                on_ingest=lambda done, total: progress.update(task, completed=done, total=total),
                on_event=lambda status: progress.console.print(f"Agent run: {status}"),
            )
        )
    run = result.run
    out.print(f"Ingested {result.accepted} records ({result.duplicates} already there).")
    if run.status != "succeeded" or run.report is None:
        _fail(f"The agent run {run.status}: {run.error}", 1)
    report = run.report
    breakdown = report["breakdown"]
    spend = Table(title=f"Spend by workload (30 days, total ${breakdown['total_usd']})")
    for column in ("workload", "calls", "cost (USD)", "share"):
        spend.add_column(column, justify="left" if column == "workload" else "right")
    for row in breakdown["by_workload"]:
        spend.add_row(
            row["workload"],
            str(row["calls"]),
            f"{Decimal(row['cost_usd']):.2f}",
            f"{row['share']}%",
        )
    out.print(spend)
    ranked = Table(
        title=f"Recommendations (projected savings ${report['total_monthly_savings_usd']}/month)"
    )
    for column in ("#", "recommendation", "now / month", "after", "saves", "confidence"):
        ranked.add_column(column, justify="left" if column == "recommendation" else "right")
    for rec in report["recommendations"]:
        ranked.add_row(
            str(rec["rank"]),
            rec["title"],
            f"${rec['current_monthly_usd']}",
            f"${rec['projected_monthly_usd']}",
            f"${rec['savings_monthly_usd']}",
            rec["confidence"],
        )
    out.print(ranked)
    if report.get("withheld"):
        out.print(report["withheld"]["message"])
    out.print(Markdown("\n".join(coverage_lines(report["coverage"]))))
    out.print(Markdown("## Summary\n\n" + report["summary"]))
    base, share, total = projected_bill("mid", Decimal(report["total_monthly_savings_usd"]))
    out.print(
        f"Bill on the Mid plan once these savings are verified: ${base} base + ${share} "
        f"(20% of savings) = [bold]${total}[/bold] a month."
    )
    out.print(
        f"Run {run.id}: {run.llm_calls} LLM calls, {run.tokens_used} tokens. "
        "Start `apex serve` and open it in a browser (the API is at /docs)."
    )
    if result.password is not None:
        out.print(
            f"Sign in as {DEMO_EMAIL} with password {result.password} (shown once).",
            markup=False,
        )


OrgOption = Annotated[
    str | None,
    typer.Option("--org", help="An organisation's slug: its prices, overrides included."),
]


async def _organization_id(database: Database, slug: str) -> uuid.UUID:
    from apex.identity.repository import OrganizationRepository

    async with database.unit_of_work() as session:
        organization = await OrganizationRepository(session).by_slug(slug)
    if organization is None:
        _fail(f"No organisation with slug {slug!r}.", 2)
    return organization.id


def _catalogue(org: str | None) -> Catalogue:
    """The shipped catalogue, or an organisation's effective one."""
    import asyncio

    from apex.usage.pricing import default_catalogue
    from apex.usage.service import catalogue_for

    if org is None:
        return default_catalogue()
    settings = _settings()

    from apex.kit.db import Database

    async def load() -> Catalogue:
        database = Database(settings)
        try:
            organization_id = await _organization_id(database, org)
            async with database.unit_of_work() as session:
                return await catalogue_for(session, organization_id)
        finally:
            await database.dispose()

    return asyncio.run(load())


@pricing_app.command("list")
def pricing_list(
    org: OrgOption = None,
    provider: Annotated[str | None, typer.Option(help="Only this provider.")] = None,
    legacy: Annotated[bool, typer.Option(help="Include legacy models.")] = True,
) -> None:
    """The models and their prices, USD per million tokens."""
    from rich.table import Table

    shown = [
        p
        for p in _catalogue(org)
        if (provider is None or p.provider == provider) and (legacy or p.status == "current")
    ]
    table = Table(title=f"{len(shown)} models, USD per million tokens")
    for column in ("provider", "model", "tier", "input", "cached", "output", "batch", "status"):
        table.add_column(
            column, justify="right" if column in {"input", "cached", "output"} else "left"
        )
    for p in sorted(shown, key=lambda p: (p.provider, p.model)):
        table.add_row(
            p.provider, p.model, p.capability, str(p.input), str(p.cached_input), str(p.output),
            f"-{p.batch_discount:.0%}" if p.batch_discount else "", p.status,
        )  # fmt: skip
    Console(soft_wrap=True).print(table)


@pricing_app.command("show")
def pricing_show(
    provider: Annotated[str, typer.Argument(help="As your logs spell it (azure, bedrock, ...).")],
    model: Annotated[str, typer.Argument(help="As your logs spell it.")],
    org: OrgOption = None,
) -> None:
    """How a logged model name resolves, and the price Apex uses for it."""
    import json

    price = _catalogue(org).find(provider, model)
    if price is None:
        _fail(
            f"{provider}/{model} is not in the catalogue: its records are stored unpriced unless "
            "they carry cost_usd. Set a price with `apex pricing import` or PUT /api/v1/pricing.",
            1,
        )
    out = Console(soft_wrap=True)
    out.print(f"{provider}/{model} → {price.name}", highlight=False, markup=False)
    out.print_json(json.dumps(price.model_dump(mode="json")))


@pricing_app.command("import")
def pricing_import(
    file: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="A JSON catalogue.")
    ],
    org: Annotated[str, typer.Option("--org", help="The organisation whose prices to set.")],
    dry_run: Annotated[bool, typer.Option(help="Say what would change; change nothing.")] = False,
) -> None:
    """Set an organisation's prices from a catalogue file: Apex's own format or LiteLLM's
    model_prices_and_context_window.json. Entries equal to the current price are skipped."""
    import asyncio

    from apex.kit.clock import SystemClock
    from apex.kit.db import Database
    from apex.usage.pricing import CatalogueError, read_catalogue_file
    from apex.usage.service import catalogue_for, set_override

    settings = _settings()

    async def run() -> tuple[int, int, dict[str, int]]:
        database = Database(settings)
        try:
            organization_id = await _organization_id(database, org)
            async with database.unit_of_work() as session:
                current = await catalogue_for(session, organization_id)
                try:
                    text = file.read_text("utf-8")
                    imported = read_catalogue_file(text, current, SystemClock().now().date())
                except (CatalogueError, UnicodeDecodeError) as exc:
                    _fail(f"{file}: {exc}", 1)
                changed = [p for p in imported.prices if not _same_price(current, p)]
                if not dry_run:
                    for price in changed:
                        await set_override(session, organization_id, price)
                return len(changed), len(imported.prices) - len(changed), imported.skipped
        finally:
            await database.dispose()

    changed, unchanged, skipped = asyncio.run(run())
    verb = "would set" if dry_run else "set"
    console.print(f"{org}: {verb} {changed:,} prices; {unchanged:,} already as in the file.")
    for reason, count in sorted(skipped.items()):
        console.print(f"  skipped {count:,}: {reason}", markup=False)


def _same_price(catalogue: Catalogue, price: ModelPrice) -> bool:
    known = catalogue.find(price.provider, price.model)
    return known is not None and (
        known.input,
        known.cached_input,
        known.cache_write,
        known.output,
    ) == (price.input, price.cached_input, price.cache_write, price.output)


def main() -> None:
    app()
