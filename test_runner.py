#!/usr/bin/env python3
"""Apex's test entry point: `python test_runner.py --level LEVEL [options]`.

Levels select folders through markers (tests/conftest.py): unit, integration (without the
critical suite), critical, e2e, performance; `all` is every level but performance.
Without --level: unit and integration. A level that collects no test is a failure, and so
is any harness process (postgres, redis-server, apex) still running after the run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent
LEVELS = {
    "default": "(unit or integration) and not critical",
    "unit": "unit",
    "integration": "integration and not critical",
    "critical": "critical",
    "e2e": "e2e",
    "performance": "performance",
    "all": "not performance",
}
NO_TESTS_COLLECTED = 5


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--level",
        choices=[k for k in LEVELS if k != "default"],
        default=None,
        help="which tests to run (default: unit and integration)",
    )
    parser.add_argument("--no-coverage", action="store_true", help="do not measure coverage")
    parser.add_argument("--fast-fail", action="store_true", help="stop at the first failure")
    parser.add_argument(
        "--real-llm",
        action="store_true",
        help="also run tests that call a real LLM provider (credentials from the environment)",
    )
    parser.add_argument(
        "-k", dest="keyword", metavar="EXPR", help="only tests matching EXPR (pytest -k)"
    )
    parser.add_argument(
        "--parallel",
        metavar="N|auto",
        default=None,
        help="pytest-xdist workers; 1 runs in-process (default: 2; 1 for performance, so no "
        "benchmark shares the cores with another)",
    )
    parser.add_argument("--list", action="store_true", help="list the selected tests and exit")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="N",
        help="run the selection N times in a row, stopping at the first failing round",
    )
    parser.add_argument(
        "--busy-loops",
        type=int,
        default=0,
        metavar="N",
        help="keep N CPU-bound processes spinning beside the run (to show it does not flake)",
    )
    return parser.parse_args(argv)


def pytest_command(args: argparse.Namespace) -> list[str]:
    level = args.level or "default"
    command = [
        sys.executable,
        "-m",
        "pytest",
        "tests",
        "-m",
        LEVELS[level],
        "-p",
        "no:cacheprovider",
        "-ra",
    ]
    if args.keyword:
        command += ["-k", args.keyword]
    if args.list:
        return [*command, "--collect-only", "-q"]
    if args.fast_fail:
        command.append("-x")
    parallel = args.parallel or ("1" if level == "performance" else "2")
    if parallel not in {"0", "1"}:
        command += ["-n", parallel, "--dist", "loadfile"]
    if not args.no_coverage and level != "performance":
        command += ["--cov=apex", "--cov-report=term:skip-covered"]
    return command


def leftovers(run_id: str) -> list[tuple[int, str]]:
    """This run's harness processes still running; other runs' are left alone."""
    sys.path.insert(0, str(ROOT))
    from tests.harness.procs import leftover_processes

    return leftover_processes(run_id)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    spinners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy_loops)
    ]
    try:
        for round_number in range(1, args.repeat + 1):
            started = time.monotonic()
            code = run_once(args)
            took = time.monotonic() - started
            if args.repeat > 1 or spinners:
                verdict = "passed" if code == 0 else f"FAILED (exit {code})"
                print(
                    f"test_runner: round {round_number}/{args.repeat} {verdict} in {took:.0f} s"
                    f" with {len(spinners)} busy loops beside it",
                    flush=True,
                )
            if code != 0:
                return code
        return 0
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def run_once(args: argparse.Namespace) -> int:
    env = dict(os.environ)
    # Names this run's harness folders, so the sweep below ends only this run's processes.
    run_id = env["APEX_TEST_RUN_ID"] = uuid.uuid4().hex[:12]
    if args.real_llm:
        env["APEX_TEST_REAL_LLM"] = "1"
    command = pytest_command(args)
    print("+", " ".join(command), flush=True)
    code = subprocess.call(command, cwd=ROOT, env=env)
    if code == NO_TESTS_COLLECTED:
        print(
            f"test_runner: level {args.level or 'default'!r} collected no test: that is a failure.",
            file=sys.stderr,
        )
        code = 1
    left = leftovers(run_id)
    if left:
        print("test_runner: harness processes outlived the run (killed now):", file=sys.stderr)
        for pid, cmd in left:
            print(f"  {pid} {cmd[:160]}", file=sys.stderr)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        code = code or 1
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
