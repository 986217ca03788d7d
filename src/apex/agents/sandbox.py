"""Heavy analyses in a subprocess under memory (RLIMIT_AS) and CPU (RLIMIT_CPU) limits.

Each analysis gets a fresh process of its own, so limits are per analysis and a runaway one
is stopped by the kernel (CPU: SIGXCPU, then SIGKILL at the hard limit) or fails its
allocations (memory) without touching the worker, which only sees `AnalysisKilled`.

One `multiprocessing.Process` and one pipe per analysis, rather than a `ProcessPoolExecutor`:
CPython 3.11's pool can stop replacing workers when `max_tasks_per_child` is set
(python/cpython#115634) and keeps why a worker died in a private table, while a process of
our own gives its exit signal directly and is killed when its step is cancelled.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import pickle
import resource
import signal
from multiprocessing.connection import Connection
from typing import Any

from apex.agents.tools.analyses import RECOMMENDERS, Recommendation
from apex.usage.pricing import Catalogue
from apex.usage.spend import SpendData

RUNAWAY_MEMORY = "memory"
RUNAWAY_CPU = "cpu"
_OUT_OF_MEMORY = "out_of_memory"


class AnalysisKilled(RuntimeError):
    """An analysis went over its memory or CPU limit and was stopped."""


def _limit(memory_bytes: int, cpu_seconds: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))


def _runaway(kind: str) -> None:
    """What a runaway analysis does (used through a failpoint by the tests)."""
    if kind == RUNAWAY_MEMORY:
        hoard = []
        while True:
            hoard.append(bytearray(64 * 1024 * 1024))
    while True:
        pass


def _analyse(
    name: str, data: SpendData, catalogue: Catalogue, runaway: str | None
) -> tuple[str, Any]:
    exhausted = False
    try:
        if runaway is not None:
            _runaway(runaway)
        return "ok", RECOMMENDERS[name](data, catalogue)
    except MemoryError:
        exhausted = True  # leave the except block first: its traceback pins the memory
    except Exception as error:  # a bug in an analysis: the worker re-raises it
        return "error", error
    assert exhausted
    return _OUT_OF_MEMORY, None


def _child(
    results: Connection, limits: tuple[int, int], name: str, inputs: bytes, runaway: str | None
) -> None:
    """The subprocess: limit itself, run one analysis, send back what happened."""
    _limit(*limits)
    data, catalogue = pickle.loads(inputs)  # noqa: S301 (pickled by the worker that forked us)
    outcome = _analyse(name, data, catalogue, runaway)
    try:
        results.send(outcome)
    except Exception as error:  # an unpicklable error: send its text
        results.send(("error", RuntimeError(f"{name}: {error!r}")))
    results.close()


async def _readable(fd: int) -> None:
    """Wait, without a thread, until `fd` can be read (data, end of file or process exit)."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


def _receive(results: Connection) -> tuple[str, Any] | None:
    """The child's outcome, or None if it died before sending one."""
    try:
        outcome: tuple[str, Any] = results.recv()
    except (EOFError, OSError):  # OSError: killed in the middle of sending
        return None
    return outcome


class AnalysisSandbox:
    def __init__(self, *, memory_mb: int, cpu_seconds: int) -> None:
        self.memory_bytes = memory_mb * 1024 * 1024
        self.cpu_seconds = cpu_seconds
        # forkserver: children fork from a small clean process, not from the threaded
        # worker. Each child re-runs the main script when Apex was started as one (the
        # `apex` console script, not `python -m apex`): with `apex.cli` preloaded, an
        # analysis of `apex demo` takes about 10 ms instead of 90.
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(["apex.agents.sandbox", "apex.cli"])
        self._last_inputs: tuple[SpendData, Catalogue, bytes] | None = None

    async def run(
        self, name: str, data: SpendData, catalogue: Catalogue, *, runaway: str | None = None
    ) -> list[Recommendation]:
        receiver, sender = self._context.Pipe(duplex=False)
        limits = (self.memory_bytes, self.cpu_seconds)
        process = self._context.Process(
            target=_child,
            args=(sender, limits, name, self._pickled(data, catalogue), runaway),
            name=f"apex-analysis-{name}",
            daemon=True,
        )
        try:
            process.start()
            sender.close()  # the child holds its own end: end of file means it has died
            await _readable(receiver.fileno())
            outcome = _receive(receiver)
            await _readable(process.sentinel)
            process.join()
        finally:
            if process.is_alive():  # cancelled: the analysis must not outlive its step
                process.kill()
                process.join()
            sender.close()
            receiver.close()
        exitcode = process.exitcode
        process.close()
        return self._result(name, outcome, exitcode)

    def _pickled(self, data: SpendData, catalogue: Catalogue) -> bytes:
        """The inputs as bytes, pickled once for the several analyses of one data step
        (over a million records: 110 ms each time, for 2 MB of aggregates)."""
        last = self._last_inputs
        if last is None or last[0] is not data or last[1] is not catalogue:
            last = (data, catalogue, pickle.dumps((data, catalogue)))
            self._last_inputs = last
        return last[2]

    def _result(
        self, name: str, outcome: tuple[str, Any] | None, exitcode: int | None
    ) -> list[Recommendation]:
        if outcome is None:
            raise self._death(name, exitcode)
        kind, value = outcome
        if kind == _OUT_OF_MEMORY:
            raise AnalysisKilled(
                f"{name} went over its memory limit ({self.memory_bytes // 2**20} MB) "
                "and was stopped"
            )
        if kind == "error":
            raise value
        result: list[Recommendation] = value
        return result

    def _death(self, name: str, exitcode: int | None) -> AnalysisKilled:
        died_of = signal.Signals(-exitcode) if exitcode is not None and exitcode < 0 else None
        if died_of in (signal.SIGXCPU, signal.SIGKILL):
            return AnalysisKilled(
                f"{name} went over its CPU limit ({self.cpu_seconds} s) and was killed"
            )
        how = died_of.name if died_of is not None else f"exit code {exitcode}"
        return AnalysisKilled(f"{name}'s process died ({how})")
