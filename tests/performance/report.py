"""Benchmarks write their results into docs/benchmarks.md, each in its own marked section."""

from __future__ import annotations

import platform
import re
import statistics
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "docs" / "benchmarks.md"
HEADER = (
    "# Benchmarks\n\n"
    "Measured, not asserted: each benchmark runs its own baseline in the same run, on the same\n"
    "machine. Regenerate with `python test_runner.py --level performance`.\n"
)


@dataclass(frozen=True)
class Timing:
    """Latency samples (seconds) of one variant."""

    name: str
    samples: list[float]

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.samples) * 1000

    @property
    def p99_ms(self) -> float:
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000

    @property
    def per_second(self) -> float:
        return len(self.samples) / sum(self.samples)


def write_section(key: str, title: str, body: str) -> None:
    """Replace (or add) the section `key` of docs/benchmarks.md."""
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else HEADER
    when = (
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.python_version()}, {platform.machine()}"
    )
    start, end = f"<!-- bench:{key} -->", f"<!-- /bench:{key} -->"
    section = f"{start}\n## {title}\n\n_Measured {when}._\n\n{body.strip()}\n{end}"
    pattern = re.compile(rf"{re.escape(start)}.*?{re.escape(end)}", re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text)
    else:
        text = f"{text.rstrip()}\n\n{section}\n"
    BENCHMARKS.write_text(text)


def timing_table(rows: list[Timing], baseline: Timing) -> str:
    lines = [
        "| variant | p50 ms | p99 ms | per second | p50 vs baseline |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        ratio = row.p50_ms / baseline.p50_ms
        lines.append(
            f"| {row.name} | {row.p50_ms:.3f} | {row.p99_ms:.3f} | {row.per_second:,.0f} "
            f"| {ratio:.2f}x |"
        )
    return "\n".join(lines)
