"""Heavy analyses in a subprocess under memory (RLIMIT_AS) and CPU (RLIMIT_CPU) limits.

Each analysis gets a fresh process (`max_tasks_per_child=1`), so limits are per analysis and
a runaway one is stopped by the kernel (CPU: SIGXCPU/SIGKILL) or fails its allocations
(memory) without touching the worker, which only sees `AnalysisKilled`.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import resource
import signal
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from apex.agents.tools.analyses import RECOMMENDERS, Recommendation
from apex.usage.pricing import Catalogue
from apex.usage.spend import SpendData

RUNAWAY_MEMORY = "memory"
RUNAWAY_CPU = "cpu"


class AnalysisKilled(RuntimeError):
    """An analysis went over its memory or CPU limit and was stopped."""


class _OutOfMemory(Exception):
    """Raised in the child, after the memory is released, in place of `MemoryError`."""


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
) -> list[Recommendation]:
    exhausted = False
    try:
        if runaway is not None:
            _runaway(runaway)
        return RECOMMENDERS[name](data, catalogue)
    except MemoryError:
        exhausted = True  # leave the except block first: its traceback pins the memory
    if exhausted:
        raise _OutOfMemory(name)
    raise AssertionError("unreachable")


class AnalysisSandbox:
    def __init__(self, *, memory_mb: int, cpu_seconds: int) -> None:
        self.memory_bytes = memory_mb * 1024 * 1024
        self.cpu_seconds = cpu_seconds
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # forkserver: children fork from a small clean process, not from the threaded
            # worker. Preloading only the analyses keeps it from re-importing `__main__`.
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(["apex.agents.sandbox"])
            self._pool = ProcessPoolExecutor(
                max_workers=2,
                mp_context=context,
                max_tasks_per_child=1,
                initializer=_limit,
                initargs=(self.memory_bytes, self.cpu_seconds),
            )
        return self._pool

    async def run(
        self, name: str, data: SpendData, catalogue: Catalogue, *, runaway: str | None = None
    ) -> list[Recommendation]:
        loop = asyncio.get_running_loop()
        future: Any = loop.run_in_executor(
            self._executor(), _analyse, name, data, catalogue, runaway
        )
        try:
            result: list[Recommendation] = await future
        except (_OutOfMemory, MemoryError):
            raise AnalysisKilled(
                f"{name} went over its memory limit ({self.memory_bytes // 2**20} MB) "
                "and was stopped"
            ) from None
        except BrokenProcessPool:
            signals = self._exit_signals()
            self.close()  # the pool cannot be used again; the next analysis gets a new one
            if signals and signals <= {signal.SIGXCPU, signal.SIGKILL}:
                raise AnalysisKilled(
                    f"{name} went over its CPU limit ({self.cpu_seconds} s) and was killed"
                ) from None
            raise AnalysisKilled(
                f"{name}'s process died ({', '.join(s.name for s in signals) or 'no signal'})"
            ) from None
        return result

    def _exit_signals(self) -> set[signal.Signals]:
        """The signals that ended the pool's processes (read from the executor's own table)."""
        processes = getattr(self._pool, "_processes", None) or {}
        return {
            signal.Signals(-process.exitcode)
            for process in processes.values()
            if process.exitcode is not None and process.exitcode < 0
        }

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
