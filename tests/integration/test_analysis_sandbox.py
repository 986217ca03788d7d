"""The analysis sandbox: real child processes under real kernel limits."""

from __future__ import annotations

import asyncio
import multiprocessing
import os

import pytest

from apex.agents.sandbox import RUNAWAY_CPU, RUNAWAY_MEMORY, AnalysisKilled, AnalysisSandbox
from apex.agents.tools import analyses
from tests.harness.procs import eventually
from tests.unit.test_analyses import CATALOGUE, data, group

SPEND = data(
    group("agent", "openai", "gpt-4.1", 200, "40.00", status="error"),
    group("chat", "openai", "gpt-4.1", 200, "40.00"),
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_an_analysis_in_the_sandbox_answers_as_it_does_in_process() -> None:
    sandbox = AnalysisSandbox(memory_mb=512, cpu_seconds=10)
    found = await sandbox.run("error_waste", SPEND, CATALOGUE)
    assert found == analyses.error_waste(SPEND, CATALOGUE)
    assert [(r.workload, str(r.savings_monthly_usd)) for r in found] == [("agent", "40.00")]
    with pytest.raises(KeyError, match="no_such_analysis"):  # a bug is re-raised as itself
        await sandbox.run("no_such_analysis", SPEND, CATALOGUE)


async def test_runaways_are_stopped_by_their_limits_one_after_another() -> None:
    sandbox = AnalysisSandbox(memory_mb=256, cpu_seconds=1)
    with pytest.raises(AnalysisKilled, match=r"error_waste went over its memory limit \(256 MB\)"):
        await sandbox.run("error_waste", SPEND, CATALOGUE, runaway=RUNAWAY_MEMORY)
    with pytest.raises(AnalysisKilled, match=r"error_waste went over its CPU limit \(1 s\)"):
        await sandbox.run("error_waste", SPEND, CATALOGUE, runaway=RUNAWAY_CPU)
    # Each analysis has a process of its own: the next one runs as if nothing happened.
    for _ in range(3):
        assert len(await sandbox.run("error_waste", SPEND, CATALOGUE)) == 1


async def test_a_cancelled_analysis_does_not_outlive_its_step() -> None:
    sandbox = AnalysisSandbox(memory_mb=256, cpu_seconds=60)
    running = asyncio.create_task(sandbox.run("error_waste", SPEND, CATALOGUE, runaway=RUNAWAY_CPU))
    children: list[multiprocessing.process.BaseProcess] = []

    def started() -> bool:
        children[:] = [
            c for c in multiprocessing.active_children() if c.name == "apex-analysis-error_waste"
        ]
        return bool(children)

    assert await eventually(started, within=30)
    pid = children[0].pid
    assert pid is not None
    assert _alive(pid)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert await eventually(lambda: not _alive(pid), within=30)
