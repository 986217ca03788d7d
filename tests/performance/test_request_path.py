"""An authenticated `GET /api/v1/organizations/current` on one `apex serve` (PostgreSQL and
redis-server) against a bare FastAPI route on the same uvicorn, side by side in the same run:
throughput under `wrk` (16 connections) and sequential latency p50/p99."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Callable

import httpx
import pytest

from tests.harness import ApexServer, PostgresCluster, RedisServer
from tests.harness.procs import free_port, make_workdir, start_python_server
from tests.integration.conftest import redis_server, start_apex
from tests.integration.critical.conftest import bearer, set_tier, signup
from tests.performance.report import Timing, timing_table, write_section

__all__ = ["redis_server", "start_apex"]
SEQUENTIAL = 1000
WRK_SECONDS = 10
CONNECTIONS = 16
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def wrk(url: str, headers: dict[str, str]) -> tuple[float, float, float]:
    """Requests per second, p50 and p99 in ms, from `wrk --latency`."""
    argv = ["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{WRK_SECONDS}s", "--latency"]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    out = subprocess.run(
        [*argv, url], capture_output=True, text=True, timeout=WRK_SECONDS + 30, check=True
    ).stdout
    assert "Non-2xx" not in out, out
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]

    def percentile(p: str) -> float:
        value, unit = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
        return float(value) * _UNITS[unit]

    return rate, percentile("50"), percentile("99")


def sequential(url: str, headers: dict[str, str], name: str) -> Timing:
    samples = []
    with httpx.Client(headers=headers, timeout=10) as client:
        for _ in range(50):  # warm up
            client.get(url)
        for _ in range(SEQUENTIAL):
            started = time.perf_counter()
            answer = client.get(url)
            samples.append(time.perf_counter() - started)
            assert answer.status_code == 200, answer.text
    return Timing(name, samples)


@pytest.mark.skipif(shutil.which("wrk") is None, reason="needs wrk (Debian package wrk)")
def test_authenticated_get_against_a_bare_route(
    postgres: PostgresCluster,
    database_url: str,
    redis_server: RedisServer,
    start_apex: Callable[..., ApexServer],
) -> None:
    server = start_apex(database_url, redis_server.url)
    with server.client() as client:
        signed_up = signup(client)
    # Enterprise: no hourly API limit, so wrk's tens of thousands of requests stay 200s.
    set_tier(postgres, database_url, signed_up.json()["organization_id"], "enterprise")
    headers = bearer(signed_up)
    apex_url = f"{server.base_url}/api/v1/organizations/current"

    port = free_port()
    root = make_workdir("bare")
    bare = start_python_server(
        "tests.performance.bare_app", [str(port)], root=root, log_path=root / "bare.log",
        ready_url=f"http://127.0.0.1:{port}/health", what="bare FastAPI", timeout=30,
    )  # fmt: skip
    bare_url = f"http://127.0.0.1:{port}/bare"
    try:
        seq_bare = sequential(bare_url, {}, "bare FastAPI route (baseline)")
        seq_apex = sequential(apex_url, headers, "Apex: authenticated GET /organizations/current")
        wrk_bare = wrk(bare_url, {})
        wrk_apex = wrk(apex_url, headers)
    finally:
        bare.terminate()
    added_p50 = seq_apex.p50_ms - seq_bare.p50_ms
    added_p99 = seq_apex.p99_ms - seq_bare.p99_ms
    share = wrk_apex[0] / wrk_bare[0]
    print(
        f"\nrequest path: +{added_p50:.2f} ms p50, +{added_p99:.2f} ms p99, {share:.2f}x throughput"
    )
    write_section(
        "request_path",
        "The request path: an authenticated GET against a bare FastAPI route",
        "One `apex serve` (PostgreSQL and redis-server started by the harness, an Enterprise\n"
        "organisation so no hourly limit cuts in) answers `GET /api/v1/organizations/current`\n"
        "with a bearer token; beside it, a bare FastAPI route on the same uvicorn options\n"
        "(`tests/performance/bare_app.py`). Same machine, same run.\n\n"
        f"Sequential, one client, {SEQUENTIAL:,} requests each after 50 to warm up:\n\n"
        + timing_table([seq_bare, seq_apex], seq_bare)
        + f"\n\nAdded by Apex: **{added_p50:+.2f} ms p50, {added_p99:+.2f} ms p99**.\n\n"
        f"`wrk -t2 -c{CONNECTIONS} -d{WRK_SECONDS}s --latency` (wrk shares the 2 cores):\n\n"
        "| route | requests/s | p50 ms | p99 ms |\n|---|---:|---:|---:|\n"
        f"| bare FastAPI route (baseline) | {wrk_bare[0]:,.0f} | {wrk_bare[1]:.2f} "
        f"| {wrk_bare[2]:.2f} |\n"
        f"| Apex authenticated GET | {wrk_apex[0]:,.0f} | {wrk_apex[1]:.2f} | {wrk_apex[2]:.2f} |\n"
        f"\nThroughput: **{share:.2f}x** the bare route's.",
    )
    assert wrk_apex[0] > 0
    assert wrk_bare[0] > 0
