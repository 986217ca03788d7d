"""Streamed usage imports: an NDJSON upload (optionally gzip), read line by line as it
arrives and stored in chunks through the same `service.ingest` as the REST batches.

Each chunk is one transaction that stores its records, adds them to the rollups, adds its
counts to the import's row and keeps the verdicts of its problem lines: the progress
resource (`GET /api/v1/usage/imports/{id}`) always says exactly what is stored. An upload
that breaks off leaves the import `failed` with the chunks before the break stored; sending
the file again stores the rest and reports the first part as duplicates (record ids).
"""

from __future__ import annotations

import uuid
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from pydantic_core import from_json
from starlette.requests import ClientDisconnect

from apex.kit.clock import Clock
from apex.kit.db import Database
from apex.kit.errors import ApexError, BadRequest
from apex.usage import service
from apex.usage.models import ImportStatus, UsageImport
from apex.usage.quota import RecordQuota
from apex.usage.repository import ImportRepository
from apex.usage.schemas import FieldProblem, IngestReport, RecordResult

CHUNK_RECORDS = 5_000
MAX_LINE_BYTES = 256 * 1024
MAX_PROBLEMS_KEPT = 10_000  # verdicts kept per import; past it, problems are only counted
log = structlog.get_logger(__name__)


@dataclass
class Line:
    number: int  # 1-based, as an editor shows it
    record: Any = None
    problem: FieldProblem | None = None  # the line could not be read as JSON


async def _decoded(chunks: AsyncIterator[bytes], gzip: bool) -> AsyncIterator[bytes]:
    if not gzip:
        async for chunk in chunks:
            yield chunk
        return
    inflater = zlib.decompressobj(wbits=31)
    try:
        async for chunk in chunks:
            yield inflater.decompress(chunk)
        yield inflater.flush()
    except zlib.error as exc:
        raise BadRequest(f"The body is not valid gzip: {exc}.") from None
    if not inflater.eof:
        raise BadRequest("The gzip stream ended early: the upload was cut short.")


def _parsed(number: int, raw: bytes) -> Line:
    if len(raw) > MAX_LINE_BYTES:
        reason = f"longer than {MAX_LINE_BYTES:,} bytes"
        return Line(number, problem=FieldProblem(field="line", reason=reason))
    try:
        return Line(number, record=from_json(raw))
    except ValueError as exc:
        return Line(number, problem=FieldProblem(field="line", reason=f"not JSON: {exc}"))


async def lines_of(chunks: AsyncIterator[bytes], *, gzip: bool) -> AsyncIterator[Line]:
    """The non-blank lines of the body, parsed, as they arrive."""
    pending = b""
    number = 0
    async for data in _decoded(chunks, gzip):
        pending += data
        *complete, pending = pending.split(b"\n")
        if len(pending) > MAX_LINE_BYTES:  # a line without an end: stop buffering it
            raise BadRequest(f"Line {number + len(complete) + 1} is longer than "
                             f"{MAX_LINE_BYTES:,} bytes.")  # fmt: skip
        for raw in complete:
            number += 1
            if raw.strip():
                yield _parsed(number, raw)
    if pending.strip():
        yield _parsed(number + 1, pending)


class UsageImporter:
    """Runs one import for an organisation (the caller has checked `usage:write`)."""

    def __init__(self, database: Database, clock: Clock, quota: Callable[[], RecordQuota]) -> None:
        self.database = database
        self.clock = clock
        self.quota = quota

    async def start(self, organization_id: uuid.UUID, user_id: uuid.UUID | None) -> uuid.UUID:
        async with self.database.unit_of_work(primary=True) as session:
            now = self.clock.now()
            row = await ImportRepository(session).add(
                UsageImport(
                    organization_id=organization_id,
                    created_by_id=user_id,
                    status=ImportStatus.RUNNING.value,
                    lines=0, accepted=0, duplicates=0, rejected=0, warnings=0,
                    created_at=now, updated_at=now,
                )
            )  # fmt: skip
            return row.id

    async def run(
        self,
        organization_id: uuid.UUID,
        import_id: uuid.UUID,
        chunks: AsyncIterator[bytes],
        *,
        gzip: bool,
    ) -> None:
        """Store the body's records chunk by chunk; mark the import finished or failed."""
        try:
            batch: list[Line] = []
            async for line in lines_of(chunks, gzip=gzip):
                batch.append(line)
                if len(batch) == CHUNK_RECORDS:
                    await self._store(organization_id, import_id, batch)
                    batch = []
            await self._store(organization_id, import_id, batch)
        except BaseException as exc:
            reason = (
                exc.detail
                if isinstance(exc, ApexError)
                else "the upload broke off"
                if isinstance(exc, ClientDisconnect)
                else "an unexpected error stopped it"
            ) + "; the lines counted before it are stored"
            log.warning("usage_import_failed", import_id=str(import_id), error=type(exc).__name__)
            await self._finish(import_id, ImportStatus.FAILED, reason[:500])
            raise
        await self._finish(import_id, ImportStatus.SUCCEEDED)

    async def _finish(
        self, import_id: uuid.UUID, status: ImportStatus, error: str | None = None
    ) -> None:
        async with self.database.unit_of_work(primary=True) as session:
            await ImportRepository(session).finish(import_id, status.value, self.clock.now(), error)

    async def _store(
        self, organization_id: uuid.UUID, import_id: uuid.UUID, batch: list[Line]
    ) -> None:
        if not batch:
            return
        readable = [line for line in batch if line.problem is None]
        async with self.database.unit_of_work(primary=True) as session:
            report = await service.ingest(
                session, organization_id, [line.record for line in readable], quota=self.quota(),
                now=self.clock.now(),
            )  # fmt: skip
            problems = _problems(batch, readable, report)
            imports = ImportRepository(session)
            await imports.add_counts(
                import_id,
                lines=len(batch),
                accepted=report.accepted,
                duplicates=report.duplicates,
                rejected=report.rejected + len(batch) - len(readable),
                warnings=sum(bool(result.warnings) for result in report.results),
            )
            room = MAX_PROBLEMS_KEPT - await imports.problem_count(import_id)
            await imports.add_problems(
                [
                    {"import_id": import_id, "organization_id": organization_id,
                     "line": number, "verdict": verdict}
                    for number, verdict in problems[: max(room, 0)]
                ]
            )  # fmt: skip


def _problems(
    batch: list[Line], readable: list[Line], report: IngestReport
) -> list[tuple[int, dict[str, Any]]]:
    """(line, verdict) of every line that was rejected or stored with a warning."""
    found: list[tuple[int, RecordResult]] = [
        (line.number, RecordResult(index=0, id=None, status="rejected", errors=[line.problem]))
        for line in batch
        if line.problem is not None
    ]
    for result in report.results:
        if result.status == "rejected" or result.warnings:
            found.append((readable[result.index].number, result))
    found.sort(key=lambda pair: pair[0])
    return [(number, result.model_dump(mode="json", exclude={"index"})) for number, result in found]
