"""`apex ingest FILE`: usage records from JSONL or CSV, in batches, resumable.

Each batch is one transaction through the same validation and storage as the REST API
(`service.prepare_batch`, `service.store_batch`). After a
batch commits, the byte offset reached is written to `FILE.apex-ingest.json`; a run started
again on the same (unchanged) file continues from there. Record ids keep it exact even if the
process dies after a batch committed and before the checkpoint was written: the batch is
re-sent and reported as duplicates. A file already finished is not re-sent: the run checks
which of its record ids the store has and says so (`restart=True` re-sends it all).
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apex.kit.clock import Clock, SystemClock
from apex.kit.db import Database
from apex.kit.failpoints import NO_FAILPOINTS, Failpoints
from apex.usage import service
from apex.usage.pricing import Catalogue
from apex.usage.repository import UsageRepository
from apex.usage.schemas import IngestReport, RecordResult

CHECKPOINT_SUFFIX = ".apex-ingest.json"
Progress = Callable[[int, int], None]  # (bytes done, bytes total)


class FileFormatError(ValueError):
    """The file cannot be read as JSONL or CSV; the message names the line."""


MAX_PROBLEMS_KEPT = 100


INTEGER_COLUMNS = frozenset(
    {
        "input_tokens",
        "cached_input_tokens",
        "cache_write_tokens",
        "output_tokens",
        "reasoning_tokens",
        "prefix_tokens",
        "latency_ms",
    }
)


@dataclass
class FileIngestResult:
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    resumed_from_line: int = 0
    lines: int = 0
    problems: list[tuple[int, RecordResult]] = field(default_factory=list)  # (line, result)
    warnings: int = 0
    # Set when the file had been ingested to its end before: what the store holds of it.
    already_finished: bool = False
    records_in_file: int = 0
    already_stored: int = 0

    def add(self, report: IngestReport, line_numbers: list[int]) -> None:
        self.accepted += report.accepted
        self.duplicates += report.duplicates
        self.rejected += report.rejected
        for result in report.results:
            self.warnings += bool(result.warnings)
            if (result.status == "rejected" or result.warnings) and len(
                self.problems
            ) < MAX_PROBLEMS_KEPT:
                self.problems.append((line_numbers[result.index], result))


def checkpoint_path(path: Path) -> Path:
    return path.with_name(path.name + CHECKPOINT_SUFFIX)


def _signature(path: Path) -> dict[str, int]:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _load_checkpoint(path: Path, organization_id: uuid.UUID) -> tuple[int, int]:
    """(byte offset, lines done) to resume from; (0, 0) if none applies to this file."""
    try:
        state = json.loads(checkpoint_path(path).read_text())
    except (OSError, ValueError):
        return 0, 0
    if state.get("file") != _signature(path) or state.get("organization") != str(organization_id):
        return 0, 0
    return int(state["offset"]), int(state["lines"])


def _save_checkpoint(path: Path, organization_id: uuid.UUID, offset: int, lines: int) -> None:
    target = checkpoint_path(path)
    temporary = target.with_suffix(".tmp")
    temporary.write_text(
        json.dumps(
            {
                "file": _signature(path),
                "organization": str(organization_id),
                "offset": offset,
                "lines": lines,
            }
        )
    )
    temporary.replace(target)


def _csv_record(header: list[str], line: bytes, number: int) -> dict[str, Any]:
    values = next(csv.reader(io.StringIO(line.decode("utf-8"))), [])
    if len(values) != len(header):
        raise FileFormatError(f"line {number}: {len(values)} values for {len(header)} columns")
    record: dict[str, Any] = {k: v for k, v in zip(header, values, strict=True) if v != ""}
    for column in INTEGER_COLUMNS & record.keys():
        # CSV has only text: a whole number is a count; anything else is left as text for
        # validation to reject, naming the column.
        if record[column].strip().lstrip("-").isdigit():
            record[column] = int(record[column])
    if "metadata" in record:
        try:
            record["metadata"] = json.loads(record["metadata"])
        except ValueError:
            raise FileFormatError(f"line {number}: metadata is not JSON") from None
    return record


def _records(
    handle: io.BufferedReader, kind: str, header: list[str], start_line: int
) -> Iterator[tuple[Any, int, int]]:
    """(record, line number, byte offset after it) for each non-blank line from the handle's
    position."""
    number = start_line
    for line in iter(handle.readline, b""):
        number += 1
        if not line.strip():
            continue
        if kind == "csv":
            yield _csv_record(header, line, number), number, handle.tell()
            continue
        try:
            yield json.loads(line), number, handle.tell()
        except json.JSONDecodeError as exc:
            raise FileFormatError(f"line {number}: not valid JSON ({exc.msg})") from None
        except UnicodeDecodeError:
            raise FileFormatError(f"line {number}: not UTF-8 text") from None


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in {".jsonl", ".ndjson", ".json"}:
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    raise FileFormatError(f"{path.name}: expected a .jsonl or .csv file")


async def ingest_file(
    database: Database,
    organization_id: uuid.UUID,
    path: Path,
    *,
    batch_size: int = 1000,
    progress: Progress | None = None,
    restart: bool = False,
    failpoints: Failpoints = NO_FAILPOINTS,
    clock: Clock | None = None,
) -> FileIngestResult:
    kind = _kind(path)
    clock = clock or SystemClock()
    # Local file reads block briefly between awaits; this runs in the CLI, not in a server.
    total = path.stat().st_size  # noqa: ASYNC240
    offset, lines = (0, 0) if restart else _load_checkpoint(path, organization_id)
    if total and offset >= total:
        return await _what_the_store_has(database, organization_id, path, kind, batch_size)
    result = FileIngestResult(resumed_from_line=lines)
    with path.open("rb") as handle:
        header: list[str] = []
        if kind == "csv":
            header = next(csv.reader([handle.readline().decode("utf-8-sig")]), [])
            if not header:
                raise FileFormatError(f"{path.name}: the CSV file has no header line")
            if offset == 0:
                offset, lines = handle.tell(), 1
        handle.seek(offset)
        catalogue = await _catalogue(database, organization_id)
        records = _records(handle, kind, header, lines)

        def read_next() -> _Batch | None:
            return _next_batch(records, batch_size, catalogue, organization_id, clock)

        upcoming = _read_ahead(read_next)
        while (batch := upcoming()) is not None:
            upcoming = _read_ahead(read_next)
            await _commit(database, organization_id, batch, result, failpoints)
            lines = batch.last_line
            _save_checkpoint(path, organization_id, batch.end, lines)
            if progress is not None:
                progress(batch.end, total)
        _save_checkpoint(path, organization_id, handle.tell(), lines)
    if progress is not None:
        progress(total, total)
    result.lines = lines
    return result


@dataclass
class _Batch:
    prepared: service.PreparedBatch
    numbers: list[int]  # each record's line number
    end: int  # the byte offset after its last line
    last_line: int


def _next_batch(
    records: Iterator[tuple[Any, int, int]],
    size: int,
    catalogue: Catalogue,
    organization_id: uuid.UUID,
    clock: Clock,
) -> _Batch | None:
    """The next `size` records, validated and costed; None at the end of the file."""
    batch: list[Any] = []
    numbers: list[int] = []
    end = 0
    for record, number, offset in records:
        batch.append(record)
        numbers.append(number)
        end = offset
        if len(batch) == size:
            break
    if not batch:
        return None
    prepared = service.prepare_batch(
        batch, catalogue=catalogue, organization_id=organization_id, now=clock.now()
    )
    return _Batch(prepared, numbers, end, numbers[-1])


def _read_ahead(read: Callable[[], _Batch | None]) -> Callable[[], _Batch | None]:
    """Read the next batch now, before the current one is stored; what it returns gives
    that batch, or raises its error (a bad line) only when called, so the batches before
    it are stored first. (Reading it in a thread while PostgreSQL stored the previous one
    measured 9-17% faster, but one CI run saw `apex ingest --restart` hang with it, cause
    not found: it is off until found.)"""
    try:
        batch = read()
    except Exception as exc:
        error = exc

        def fail() -> _Batch | None:
            raise error

        return fail
    return lambda: batch


async def _catalogue(database: Database, organization_id: uuid.UUID) -> Catalogue:
    async with database.unit_of_work(primary=True) as session:
        return await service.catalogue_for(session, organization_id)


async def _commit(
    database: Database,
    organization_id: uuid.UUID,
    batch: _Batch,
    result: FileIngestResult,
    failpoints: Failpoints,
) -> None:
    async with database.unit_of_work(primary=True) as session:
        report = await service.store_batch(session, organization_id, batch.prepared)
        if failpoints.fires("ingest.kill_before_commit"):
            os.kill(os.getpid(), signal.SIGKILL)
    if failpoints.fires("ingest.kill_after_commit"):  # committed, checkpoint not yet written
        os.kill(os.getpid(), signal.SIGKILL)
    result.add(report, batch.numbers)


async def _what_the_store_has(
    database: Database, organization_id: uuid.UUID, path: Path, kind: str, batch_size: int
) -> FileIngestResult:
    """For a file ingested to its end before: how many of its records the store holds."""
    result = FileIngestResult(already_finished=True)
    with path.open("rb") as handle:
        header: list[str] = []
        start = 0
        if kind == "csv":
            header = next(csv.reader([handle.readline().decode("utf-8-sig")]), [])
            start = 1
        ids: list[str] = []
        for record, number, _ in _records(handle, kind, header, start):
            result.lines = number
            result.records_in_file += 1
            if isinstance(record, dict) and isinstance(record.get("id"), str):
                ids.append(record["id"])
            if len(ids) >= batch_size:
                result.already_stored += await _count_stored(database, organization_id, ids)
                ids.clear()
        result.already_stored += await _count_stored(database, organization_id, ids)
    return result


async def _count_stored(database: Database, organization_id: uuid.UUID, ids: list[str]) -> int:
    async with database.unit_of_work() as session:
        stored = await UsageRepository(session).stored_ids(organization_id, list(set(ids)))
    return sum(record_id in stored for record_id in ids)


def upload_lines(path: Path) -> Iterator[bytes]:
    """The file as NDJSON lines whose numbers are the file's own: JSONL as it is; CSV with a
    blank line in place of its header and each row as a JSON object."""
    kind = _kind(path)
    with path.open("rb") as handle:
        if kind == "jsonl":
            yield from iter(lambda: handle.readline(), b"")
            return
        header = next(csv.reader([handle.readline().decode("utf-8-sig")]), [])
        if not header:
            raise FileFormatError(f"{path.name}: the CSV file has no header line")
        yield b"\n"
        for number, line in enumerate(iter(handle.readline, b""), start=2):
            if not line.strip():
                yield b"\n"
                continue
            yield json.dumps(_csv_record(header, line, number)).encode() + b"\n"


def gzipped(chunks: Iterator[bytes], size: int = 1 << 20) -> Iterator[bytes]:
    """Chunks compressed as one gzip stream, in pieces of about `size` bytes of input."""
    deflater = zlib.compressobj(6, zlib.DEFLATED, 31)
    pending: list[bytes] = []
    held = 0
    for chunk in chunks:
        pending.append(chunk)
        held += len(chunk)
        if held >= size:
            yield deflater.compress(b"".join(pending))
            pending, held = [], 0
    yield deflater.compress(b"".join(pending)) + deflater.flush()


IMPORT_PATH = "/api/v1/usage/events:import"


@dataclass
class RemoteImport:
    summary: dict[str, Any]
    problems: list[dict[str, Any]]


def upload_file(url: str, api_key: str, path: Path, *, timeout: float = 3600) -> RemoteImport:
    """Stream the file to a server's import endpoint (gzip) and fetch the problem lines.
    The key travels in the Authorization header only. Raises httpx.HTTPError, or
    RemoteRefused with the server's answer."""
    import httpx  # only this mode speaks HTTP: the rest of the CLI starts without it

    headers = {
        "Authorization": f"Bearer {api_key}",
        "Content-Type": "application/x-ndjson",
        "Content-Encoding": "gzip",
    }
    with httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout) as client:
        answer = client.post(IMPORT_PATH, content=gzipped(upload_lines(path)))
        if answer.status_code != 200:
            raise RemoteRefused(answer.status_code, answer.text)
        summary: dict[str, Any] = answer.json()
        problems: list[dict[str, Any]] = []
        if summary["rejected"] or summary["warnings"]:
            listed = client.get(summary["problems_url"])
            problems = [json.loads(line) for line in listed.text.splitlines()[:MAX_PROBLEMS_KEPT]]
    return RemoteImport(summary, problems)


class RemoteRefused(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"the server answered {status}: {body[:500]}")
        self.status = status
