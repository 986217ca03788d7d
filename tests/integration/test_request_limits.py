"""What a client controls is limited before Apex reads it: body size (from Content-Length
and while streaming), the time a body may take, its content type; and every answer carries
the security headers. Against a real `apex serve`, over raw sockets where httpx would be
too polite to misbehave."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator

import psutil
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.harness import ApexServer, PostgresCluster, RedisServer
from tests.harness.procs import wait_until
from tests.integration.critical.conftest import database_name
from tests.integration.critical.test_realtime import account, new_thread, open_session, switch

SECURITY_HEADERS = {
    "strict-transport-security",
    "x-content-type-options",
    "x-frame-options",
    "referrer-policy",
    "content-security-policy",
}
MIB = 1024 * 1024


@pytest.fixture
def server(
    database_url: str, redis_server: RedisServer, start_apex: Callable[..., ApexServer]
) -> ApexServer:
    return start_apex(database_url, redis_server.url, body_read_timeout_seconds="1")


def raw(server: ApexServer, request: bytes, *, body: bytes = b"") -> str:
    """Send bytes as they are; the whole answer, read until the server closes (the refusals
    under test all close the connection)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        sock.sendall(request + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer.decode("latin-1")


def status(answer: str) -> int:
    return int(answer.split(" ", 2)[1])


def test_every_answer_carries_the_security_headers(server: ApexServer) -> None:
    with server.client() as client:
        answers = [
            client.get("/health/live"),
            client.get("/no/such/page"),
            client.get("/api/v1/users/me"),  # 401
            client.post("/api/v1/auth/token", json={"email": 1}),  # 422
            client.get("/docs"),
            client.get("/openapi.json"),
        ]
    for answer in answers:
        assert set(answer.headers) >= SECURITY_HEADERS, (answer.request.url, answer.headers)
        assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]


def test_the_api_docs_load_nothing_from_elsewhere(server: ApexServer) -> None:
    with server.client() as client:
        page = client.get("/docs")
        assert page.status_code == 200
        assert not re.search(r"(src|href)=\"(https?:)?//", page.text)  # no CDN
        assert "<script>" not in page.text  # no inline script under the CSP
        for asset in re.findall(r"(?:src|href)=\"([^\"]+)\"", page.text):
            assert client.get(asset).status_code == 200, asset
        limits = client.get("/openapi.json").json()["paths"]
    assert limits["/api/v1/usage/events"]["post"]["x-body-limit-bytes"] == 10 * MIB
    assert limits["/api/v1/auth/signup"]["post"]["x-body-limit-bytes"] == MIB


def test_an_oversized_body_is_refused_before_it_is_read(server: ApexServer) -> None:
    # 100 MB announced, not one byte of it sent: the answer comes anyway.
    head = (
        b"POST /api/v1/auth/signup HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 104857600\r\n\r\n"
    )
    answer = raw(server, head)
    assert status(answer) == 413
    assert "connection: close" in answer.lower()
    assert '"PayloadTooLarge"' in answer
    # Without a length (chunked), it is cut off once past the limit.
    with server.client() as client:
        chunks = iter([b"[" + b"1," * (MIB // 2)] * 3)
        streamed = client.post(
            "/api/v1/auth/signup",
            content=chunks,
            headers={"Content-Type": "application/json"},
        )
        assert streamed.status_code == 413
        assert streamed.json()["limit_bytes"] == MIB
        # Ingestion takes up to 10 MiB: 2 MiB of records is read, then judged on content.
        big = {"records": [{"id": "x" * 2000}] * 1000}
        ingest = client.post("/api/v1/usage/events", content=json.dumps(big).encode(),
                             headers={"Content-Type": "application/json"})  # fmt: skip
        assert ingest.status_code == 401  # read and parsed; then the missing credentials


def test_a_websocket_frame_over_64_kib_is_refused_and_frames_go_uncompressed(
    server: ApexServer,
    database_url: str,
    redis_server: RedisServer,
    start_apex: Callable[..., ApexServer],
) -> None:
    """The gateway's frame limit holds before anything reads the frame (close 1009, even
    before `auth`); permessage-deflate, offered by the client as browsers do, is declined
    by default and accepted with APEX_WEBSOCKET_COMPRESSION=true."""
    compressing = start_apex(database_url, redis_server.url, websocket_compression="true")

    async def scenario(apex: ApexServer) -> tuple[str | None, int | None]:
        url = apex.base_url.replace("http://", "ws://") + "/ws"
        async with connect(url, compression="deflate", max_size=None) as ws:
            assert ws.response is not None  # the handshake's answer
            extensions = ws.response.headers.get("Sec-WebSocket-Extensions")
            await ws.send("x" * (64 * 1024 + 1))
            try:
                async with asyncio.timeout(10):
                    await ws.recv()
            except ConnectionClosed as closed:
                return extensions, closed.rcvd.code if closed.rcvd else None
        return extensions, None

    extensions, code = asyncio.run(scenario(server))
    assert (extensions, code) == (None, 1009)
    extensions, code = asyncio.run(scenario(compressing))
    assert (str(extensions).split(";")[0], code) == ("permessage-deflate", 1009)


def test_a_burst_that_outlasts_the_heartbeat_keeps_its_connection(
    postgres: PostgresCluster,
    database_url: str,
    redis_server: RedisServer,
    start_apex: Callable[..., ApexServer],
) -> None:
    """500 messages sent at once take the server longer to store than its heartbeat (a ping
    every 0.5 s, dead 0.5 s later): the answer to its ping, behind them on the wire, is read
    at once, so the connection stays; every message is stored and echoed, in order."""
    apex = start_apex(database_url, redis_server.url, websocket_ping_seconds="0.5")
    owner = account(apex)
    burst = 500

    async def scenario() -> tuple[str, list[str], float]:
        ws = await open_session(apex, owner["access_token"], keepalive=False)
        thread_id = await new_thread(ws)
        await switch(ws, thread_id)
        started = time.monotonic()
        for n in range(burst):
            payload = {"thread_id": thread_id, "content": f"message {n}", "start_agent": False}
            await ws.send(json.dumps({"type": "user_message", "id": f"m{n}", "payload": payload}))
        echoed: list[str] = []
        async with asyncio.timeout(300):
            while len(echoed) < burst:
                frame = json.loads(await ws.recv())  # ConnectionClosed here: dropped as dead
                assert frame["type"] not in ("error", "rate_limited"), frame
                if frame["type"] == "thread_message":
                    echoed.append(frame["payload"]["message"]["content"])
        took = time.monotonic() - started
        await ws.close()
        return thread_id, echoed, took

    thread_id, echoed, took = asyncio.run(scenario())
    assert echoed == [f"message {n}" for n in range(burst)]
    assert took > 1.0, "the burst did not outlast the heartbeat: the test proves nothing"
    stored = postgres.sql(
        f"SELECT count(*) FROM messages WHERE thread_id = '{thread_id}'",  # noqa: S608
        database_name(database_url),
    )
    assert int(stored) == burst
    print(f"\nburst of {burst}: stored and echoed in {took:.1f}s (heartbeat 0.5 + 0.5 s)")


def test_a_body_that_does_not_arrive_in_time_is_refused(server: ApexServer) -> None:
    head = (
        b"POST /api/v1/auth/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n"
    )
    started = time.monotonic()
    answer = raw(server, head, body=b'{"email":')  # 9 of the 1,000 bytes, then nothing
    waited = time.monotonic() - started
    assert status(answer) == 408, answer
    assert "connection: close" in answer.lower()
    print(f"\nslow body: refused after {waited:.2f}s (limit 1 s)")


def test_a_body_that_is_not_json_is_refused(server: ApexServer) -> None:
    with server.client() as client:
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        plain = client.post("/api/v1/auth/token", content=b"email=a", headers=form)
        assert (plain.status_code, plain.json()["error"]) == (415, "UnsupportedMediaType")
        # JSON with a charset is JSON.
        utf8 = {"Content-Type": "application/json; charset=utf-8"}
        charset = client.post("/api/v1/auth/token", content=b"{}", headers=utf8)
        assert charset.status_code == 422
        # A POST without a body has no content type to check.
        assert client.post("/api/v1/auth/logout").status_code == 401


@pytest.fixture
def uploads() -> Iterator[list[threading.Thread]]:
    threads: list[threading.Thread] = []
    yield threads
    for thread in threads:
        thread.join(timeout=60)


def _upload_100_mb(server: ApexServer, refused: list[int]) -> None:
    """Stream 100 MB in chunks without a length, as a client that ignores limits would."""
    head = (
        b"POST /api/v1/auth/signup HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"%x\r\n%s\r\n" % (64 * 1024, b"a" * 64 * 1024)
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head)
        try:
            for _ in range(100 * 16):  # 1,600 x 64 KiB = 100 MiB
                sock.sendall(chunk)
        except OSError:
            pass  # the server answered and closed: the rest is never read
        answer = sock.recv(4096).decode("latin-1")
    if answer:
        refused.append(status(answer))


def test_twenty_concurrent_100_mb_uploads_do_not_grow_the_server(
    server: ApexServer, uploads: list[threading.Thread]
) -> None:
    assert server.process is not None
    process = psutil.Process(server.process.pid)
    with server.client() as client:
        client.get("/health/ready")
    idle = process.memory_info().rss
    peak = idle
    refused: list[int] = []
    for _ in range(20):
        uploads.append(threading.Thread(target=_upload_100_mb, args=(server, refused)))
    for thread in uploads:
        thread.start()
    while any(thread.is_alive() for thread in uploads):
        peak = max(peak, process.memory_info().rss)
        time.sleep(0.01)
    assert wait_until(lambda: len(refused) == 20, timeout=30), refused
    assert refused == [413] * 20
    grown = (peak - idle) / MIB
    print(f"\n20 x 100 MB uploads: idle RSS {idle / MIB:.0f} MB, peak +{grown:.1f} MB")
    assert grown < 50


def test_an_idle_connection_outlives_the_clients_own_idle_timeout(server: ApexServer) -> None:
    """httpx drops an idle connection after 5 s, nginx's upstream pool (deploy/nginx.conf)
    after 30 s; Apex keeps it longer (APEX_HTTP_KEEPALIVE_SECONDS), so a client never sends
    a request on a connection the server is closing. Idle 6 s, the same socket still gets
    its answer."""
    request = b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        answers = []
        for pause in (0, 6):
            time.sleep(pause)
            sock.sendall(request)
            answers.append(_one_answer(sock))
    assert [status(answer) if answer else None for answer in answers] == [200, 200]


def _one_answer(sock: socket.socket) -> str:
    """One whole HTTP answer (head and Content-Length body) from a kept-alive socket; ""
    when the server closed the connection instead."""
    data = b""
    while b"\r\n\r\n" not in data:
        if not (chunk := sock.recv(65536)):
            return ""
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        body += sock.recv(65536)
    return (head + b"\r\n\r\n" + body).decode("latin-1")
