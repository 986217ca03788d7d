"""The production nginx configuration (deploy/nginx.conf), run for real in front of
`apex serve`: it passes requests through, and refuses oversized bodies and slow clients
before Apex sees them, with the same limits Apex applies itself."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.harness import ApexServer, RedisServer
from tests.harness.nginx import NginxServer

MIB = 1024 * 1024


@pytest.fixture
def proxy(
    database_url: str, redis_server: RedisServer, start_apex: Callable[..., ApexServer]
) -> Iterator[NginxServer]:
    apex = start_apex(database_url, redis_server.url)
    # The production file, with a 1-second header timeout so the test need not wait 10 s.
    nginx = NginxServer(
        [apex.port], replace={"client_header_timeout 10s;": "client_header_timeout 1s;"}
    )
    yield nginx.start()
    nginx.stop()


def test_the_production_config_proxies_and_limits(proxy: NginxServer) -> None:
    with httpx.Client(base_url=proxy.base_url, timeout=30) as client:
        live = client.get("/health/live")
        assert live.status_code == 200
        assert live.headers["x-content-type-options"] == "nosniff"  # Apex's own headers pass
        assert "server" not in live.headers or "nginx/" not in live.headers["server"]
        json_type = {"Content-Type": "application/json"}
        # 2 MiB: over the default limit, refused by nginx; within ingestion's 10 MiB, passed
        # on to Apex (which then asks for credentials).
        body = b'{"records": [' + b'{"id": "x"},' * (2 * MIB // 12) + b'{"id": "y"}]}'
        assert (
            client.post("/api/v1/auth/signup", content=body, headers=json_type).status_code == 413
        )
        ingest = client.post("/api/v1/usage/events", content=body, headers=json_type)
        assert ingest.status_code == 401, ingest.text


def test_a_client_that_sends_half_its_headers_is_cut_off(proxy: NginxServer) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        started = time.monotonic()
        closed = sock.recv(4096)
        waited = time.monotonic() - started
    # Closed by nginx (the socket's own 10 s timeout would raise instead).
    assert closed == b"" or closed.startswith(b"HTTP/1.1 408")
    print(f"\nnginx: half-sent headers cut off after {waited:.1f}s (client_header_timeout 1s)")
