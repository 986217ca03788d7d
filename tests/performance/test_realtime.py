"""WebSocket fan-out: 1,000 clients spread over three `apex serve` instances (PostgreSQL,
redis-server) follow one thread while a publisher posts messages to it; against a bare
`websockets` broadcast server (one process) and python-socketio with its Redis manager
(three processes), measured with the same clients (a lean frame reader, `ws_client.py`)
in the same run, with the CPU each side spends. Also: the memory an
idle connection costs an Apex instance, and the rate-limit decision against a raw
`EVALSHA` of the same script."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import resource
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import psutil
import redis.asyncio as aioredis
from websockets.asyncio.client import connect

from apex.kit.limits import _HIT, FixedWindow
from tests.harness import ApexServer, PostgresCluster, RedisServer
from tests.harness.procs import free_port, make_workdir, start_python_server
from tests.integration.conftest import redis_server, start_apex
from tests.integration.critical.conftest import bearer, signup
from tests.performance.report import write_section
from tests.performance.ws_client import LeanClient, lean_connect

__all__ = ["redis_server", "start_apex"]
CLIENTS = 1_000
MESSAGES = 100
# Seconds between published messages: a burst faster than any server delivers (its
# throughput, its latency is queueing), then a pace every server keeps up with (latency).
INTERVALS = (0.005, 0.050)
LIMITER_CALLS = 2_000
ROUND_TRIPS = 300  # one at a time, for a chat message's latency with the machine at rest
ROUNDS = 5


@dataclass
class Run:
    """One variant's fan-out: when each message was sent, and every delivery's latency."""

    name: str
    interval: float
    sent: dict[int, float] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    server_cpu: float = 0.0  # CPU seconds of the server's own processes during the run
    client_cpu: float = 0.0  # CPU seconds of this process (the measuring clients)

    def row(self) -> tuple[str, float, float, float, float, int, float, float]:
        ordered = sorted(self.latencies)
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        return (self.name, self.interval * 1000, statistics.median(ordered) * 1000,
                p99 * 1000, len(ordered) / self.seconds, len(ordered),
                self.server_cpu / len(ordered) * 1e6, self.client_cpu / self.seconds)  # fmt: skip


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """User and system CPU time each of the processes `pids` has used so far."""
    used = {}
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            used[pid] = sum(psutil.Process(pid).cpu_times()[:2])
    return used


def with_children(pid: int) -> list[int]:
    """A server and its children (PostgreSQL's backends)."""
    return [pid, *(child.pid for child in psutil.Process(pid).children(recursive=True))]


def cpu_used(pids: Callable[[], list[int]], since: dict[int, float]) -> float:
    return sum(used - since.get(pid, 0.0) for pid, used in cpu_seconds(pids()).items())


def runs_of(name: str) -> list[Run]:
    return [Run(name, interval) for interval in INTERVALS]


Opener = Callable[[int], Awaitable[LeanClient]]
Parser = Callable[[str], int | None]


def countdown(count: int, done: asyncio.Event) -> Callable[[], None]:
    """What sets `done` on its `count`-th call."""
    left = count

    def one() -> None:
        nonlocal left
        left -= 1
        if left == 0:
            done.set()

    return one


def recorder(run: Run, parse: Parser, finished: Callable[[], None]) -> Callable[[str], None]:
    """What one client does with each message of `run`: note its latency; `finished` once
    it has all `MESSAGES`."""
    seen = 0

    def on_text(text: str) -> None:
        nonlocal seen
        index = parse(text)
        if index is None:
            return
        run.latencies.append(time.perf_counter() - run.sent[index])
        seen += 1
        if seen == MESSAGES:
            finished()

    return on_text


async def fan_out(
    runs: list[Run], open_client: Opener, parse: Parser,
    publish: Callable[[int], Awaitable[None]], servers: Callable[[], list[int]],
) -> None:  # fmt: skip
    """The same clients through each run in turn, `MESSAGES` published at its interval;
    the CPU the `servers` processes and this one use during each run is counted."""
    clients = []
    for n in range(CLIENTS):
        clients.append(await open_client(n))
    # The measuring client's own pauses are not the servers': the connections' objects are
    # moved out of the collector's sight (a full collection over them stalled it ~200 ms).
    gc.collect()
    gc.freeze()
    await asyncio.sleep(1)

    for number, run in enumerate(runs):
        everyone = asyncio.Event()
        finished = countdown(len(clients), everyone)
        for ws in clients:
            ws.on_text = recorder(run, parse, finished)
        started = time.perf_counter()
        server_cpu, client_cpu = cpu_seconds(servers()), cpu_seconds([os.getpid()])
        for index in range(number * MESSAGES, (number + 1) * MESSAGES):
            run.sent[index] = time.perf_counter()
            await publish(index)
            await asyncio.sleep(run.interval)
        async with asyncio.timeout(120):
            await everyone.wait()
        run.seconds = time.perf_counter() - started
        run.server_cpu = cpu_used(servers, server_cpu)
        run.client_cpu = cpu_used(lambda: [os.getpid()], client_cpu)
        await asyncio.sleep(0.5)
    for ws in clients:
        await ws.close()
    gc.unfreeze()


async def apex_run(
    servers: list[ApexServer], token: str, redis_pid: int, postgres_pid: int
) -> tuple[list[Run], float]:
    runs = runs_of("Apex: 3 instances, Redis channels, uncompressed (its default)")
    urls = [s.base_url.replace("http://", "ws://") + "/ws" for s in servers]
    publisher = await connect(urls[0], subprotocols=[f"bearer.{token}"])  # type: ignore[list-item]
    await publisher.recv()  # connection_established
    await publisher.send(json.dumps({"type": "create_thread", "payload": {}}))
    thread_id = json.loads(await publisher.recv())["payload"]["thread"]["id"]
    memory_before = sum(psutil.Process(s.process.pid).memory_info().rss for s in servers)  # type: ignore[union-attr]

    async def open_client(n: int) -> LeanClient:
        ws = await lean_connect(urls[n % len(urls)], subprotocol=f"bearer.{token}")
        await ws.recv()  # connection_established
        await ws.send(json.dumps({"type": "switch_thread", "payload": {"thread_id": thread_id}}))
        return ws

    def parse(text: str) -> int | None:
        # Read like the baselines' frames, without decoding the whole envelope: a full JSON
        # parse of 1,000 frames a message made the measuring client Apex's bottleneck.
        if not text.startswith('{"type": "thread_message"'):
            return None
        start = text.index('"content": "') + len('"content": "')
        return int(text[start : text.index('"', start)])

    async def publish(index: int) -> None:
        message = {"thread_id": thread_id, "content": str(index), "start_agent": False}
        await publisher.send(json.dumps({"type": "user_message", "payload": message}))

    per_connection = 0.0

    async def measured_open(n: int) -> LeanClient:
        nonlocal per_connection
        ws = await open_client(n)
        if n == CLIENTS - 1:
            await asyncio.sleep(1)
            after = sum(psutil.Process(s.process.pid).memory_info().rss for s in servers)  # type: ignore[union-attr]
            per_connection = (after - memory_before) / CLIENTS
        return ws

    def server_pids() -> list[int]:  # the instances, and the Redis and PostgreSQL they use
        instances = [s.process.pid for s in servers]  # type: ignore[union-attr]
        return [*instances, redis_pid, *with_children(postgres_pid)]

    await fan_out(runs, measured_open, parse, publish, server_pids)
    await publisher.close()
    return runs, per_connection


async def round_trips(url: str, token: str) -> dict[str, list[float]]:
    """One message at a time on an idle instance: `user_message` until the thread's other
    follower receives it (stored in PostgreSQL, appended to the channel, relayed by Pub/Sub),
    against `ping` until its `pong` (the gateway's own round trip, the floor)."""
    publisher = await connect(url, subprotocols=[f"bearer.{token}"])  # type: ignore[list-item]
    follower = await connect(url, subprotocols=[f"bearer.{token}"])  # type: ignore[list-item]
    for ws in (publisher, follower):
        await ws.recv()  # connection_established
    await publisher.send(json.dumps({"type": "create_thread", "payload": {}}))
    thread_id = json.loads(await publisher.recv())["payload"]["thread"]["id"]
    await follower.send(json.dumps({"type": "switch_thread", "payload": {"thread_id": thread_id}}))
    await follower.recv()  # thread_switched
    taken: dict[str, list[float]] = {"user_message": [], "ping": []}
    for n in range(ROUND_TRIPS):
        payload = {"thread_id": thread_id, "content": f"rt{n}", "start_agent": False}
        started = time.perf_counter()
        await publisher.send(json.dumps({"type": "user_message", "payload": payload}))
        while f'"content": "rt{n}"' not in str(await follower.recv()):
            pass
        taken["user_message"].append(time.perf_counter() - started)
        started = time.perf_counter()
        await publisher.send(json.dumps({"type": "ping", "id": f"p{n}", "payload": {}}))
        while f'"reply_to": "p{n}"' not in str(await publisher.recv()):
            pass
        taken["ping"].append(time.perf_counter() - started)
        await asyncio.sleep(0.01)
    await publisher.close()
    await follower.close()
    return taken


def percentiles_ms(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return statistics.median(ordered) * 1000, p99 * 1000


async def bare_run(port: int, compression: str, pid: int) -> list[Run]:
    wire = "permessage-deflate" if compression == "deflate" else "uncompressed"
    runs = runs_of(f"bare `websockets` broadcast, 1 process, {wire}")
    url = f"ws://127.0.0.1:{port}/"
    publisher = await connect(url)

    async def open_client(n: int) -> LeanClient:
        return await lean_connect(url)

    async def publish(index: int) -> None:
        await publisher.send(f"pub {index}")

    await fan_out(runs, open_client, lambda raw: int(raw), publish, lambda: [pid])
    await publisher.close()
    return runs


async def socketio_run(ports: list[int], pids: list[int]) -> list[Run]:
    """python-socketio over its Engine.IO v4 WebSocket transport, spoken directly; `pids`:
    its processes and the Redis they share."""
    runs = runs_of("python-socketio + Redis manager, 3 processes, permessage-deflate")

    async def engine(port: int) -> LeanClient:
        ws = await lean_connect(f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket")
        assert (await ws.recv()).startswith("0")  # open
        await ws.send("40")  # connect to namespace /
        assert (await ws.recv()).startswith("40")
        return ws

    publisher = await engine(ports[0])

    def parse(text: str) -> int | None:
        if not text.startswith("42"):
            return None  # pings are answered by nobody: the run ends before they matter
        event, data = json.loads(text[2:])
        return int(data) if event == "message" else None

    async def publish(index: int) -> None:
        await publisher.send("42" + json.dumps(["publish", index]))

    await fan_out(runs, lambda n: engine(ports[n % len(ports)]), parse, publish, lambda: pids)
    await publisher.close()
    return runs


async def limiter_rates(url: str) -> tuple[float, float]:
    """Decisions a second: `FixedWindow.hit` against a raw EVALSHA of the same script, in
    alternating rounds (so both meet the same load on the machine)."""
    client = aioredis.Redis.from_url(url, decode_responses=True)
    window = FixedWindow(client)
    sha = await client.script_load(_HIT)
    spent = {"apex": 0.0, "raw": 0.0}
    try:
        for round_ in range(ROUNDS):
            started = time.perf_counter()
            for n in range(LIMITER_CALLS):
                await window.hit("bench", "subject", limit=10**9, window_seconds=60, now=n)
            spent["apex"] += time.perf_counter() - started
            started = time.perf_counter()
            for n in range(LIMITER_CALLS):
                await client.evalsha(sha, 1, f"raw:{round_}:{n // 60}", 10**9, 1, 61_000)
            spent["raw"] += time.perf_counter() - started
    finally:
        await client.aclose()
    calls = ROUNDS * LIMITER_CALLS
    return calls / spent["apex"], calls / spent["raw"]


def test_websocket_fan_out(
    postgres: PostgresCluster,
    database_url: str,
    redis_server: RedisServer,
    start_apex: Callable[..., ApexServer],
) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    servers = [start_apex(database_url, redis_server.url) for _ in range(3)]
    with servers[0].client() as client:
        token = bearer(signup(client))["Authorization"].removeprefix("Bearer ")
    trips = asyncio.run(round_trips(servers[0].base_url.replace("http://", "ws://") + "/ws", token))
    redis_pid = redis_server.process.pid  # type: ignore[union-attr]
    postgres_pid = postgres.process.pid  # type: ignore[union-attr]
    apex, per_connection = asyncio.run(apex_run(servers, token, redis_pid, postgres_pid))
    for server in servers:
        server.stop()

    root = make_workdir("ws-baselines")
    bare_results = []
    for compression in ("none", "deflate"):
        port = free_port()
        bare = start_python_server("tests.performance.ws_baselines",
                                   ["bare", str(port), compression], root=root,
                                   log_path=root / f"bare-{compression}.log",
                                   ready_url=f"http://127.0.0.1:{port}/health",
                                   what="bare websockets server", timeout=30)  # fmt: skip
        bare_results.append(asyncio.run(bare_run(port, compression, bare.pid)))
        bare.terminate()
    ports = [free_port() for _ in range(3)]
    processes = [
        start_python_server(
            "tests.performance.ws_baselines",
            ["socketio", str(port), redis_server.url],
            root=root,
            log_path=root / f"socketio-{port}.log",
            ready_url=f"http://127.0.0.1:{port}/health",
            what="python-socketio server",
            timeout=30,
        )
        for port in ports
    ]
    socketio_pids = [process.pid for process in processes] + [redis_pid]
    socketio_result = asyncio.run(socketio_run(ports, socketio_pids))
    for process in processes:
        process.terminate()
    apex_rate, raw_rate = asyncio.run(limiter_rates(redis_server.url))
    servers_runs = [apex, *bare_results, socketio_result]
    for run in (run for runs in servers_runs for run in runs):  # every client got every message
        assert len(run.latencies) == CLIENTS * MESSAGES, (run.name, run.interval)

    burst, paced = ([runs[n].row() for runs in servers_runs] for n in range(len(INTERVALS)))
    lines = ["| server | every ms | fan-out p50 ms | p99 ms | delivered/s | deliveries "
             "| server CPU µs a delivery | measuring client busy |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    lines += [f"| {name} | {every:.0f} | {p50:.1f} | {p99:.1f} | {rate:,.0f} | {count:,} "
              f"| {cpu:.1f} | {busy:.0%} |"
              for name, every, p50, p99, rate, count, cpu, busy in [*burst, *paced]]  # fmt: skip
    rate = [row[4] for row in burst]
    cpu = [row[6] for row in burst]
    (message_p50, message_p99), (ping_p50, ping_p99) = map(percentiles_ms, trips.values())
    write_section(
        "realtime",
        "WebSocket fan-out: Apex vs a bare `websockets` broadcast and python-socketio",
        f"{CLIENTS:,} clients in one process, spread evenly over the servers' processes,\n"
        f"all following one channel; a publisher sends {MESSAGES} messages one every "
        f"{INTERVALS[0] * 1000:.0f} ms\n(faster than any server delivers: their throughput; "
        f"latency there is queueing), then {MESSAGES}\none every {INTERVALS[1] * 1000:.0f} ms "
        "(a pace all keep up with: their latency), to the same clients.\n"
        "Latency from the publisher's send to each client's receipt\n"
        "(one clock). Apex stores each message in PostgreSQL before it fans out (the bare\n"
        "server and python-socketio store nothing); the clients, the servers and Redis share\n"
        "this machine's 2 cores. The clients read frames straight off their sockets\n"
        "(`tests/performance/ws_client.py`: under half the CPU a message that\n"
        "`websockets`' client took, which bounded every row). They offer permessage-deflate,\n"
        "as browsers do: Apex declines it by default (`APEX_WEBSOCKET_COMPRESSION`:\n"
        "compressing is per connection, for every frame), the others accept it.\n\n"
        + "\n".join(lines)
        + "\n\n"
        f"Delivered/s in the burst vs bare `websockets` uncompressed: {rate[0] / rate[1]:.2f}x,\n"
        f"with deflate: {rate[0] / rate[2]:.2f}x; vs python-socketio: {rate[0] / rate[3]:.2f}x.\n"
        "Server CPU a delivery counts the user and system time of the server's own processes\n"
        "during the run (Apex: its instances, Redis and PostgreSQL; python-socketio: its\n"
        "processes and Redis); the measuring client's busy share is its CPU time over the\n"
        "run's wall time: near 100%, the client, one process on one core, limits what that\n"
        "row can show. In the burst, Apex spent "
        f"{cpu[0]:.1f} µs of CPU a delivery,\nthe bare server {cpu[1]:.1f} µs, python-socketio "
        f"{cpu[3]:.1f} µs ({cpu[3] / cpu[0]:.2f}x Apex's).\n"
        "Memory per idle Apex connection (RSS growth of the\n"
        f"three instances / connections): {per_connection / 1024:.1f} KiB.\n\n"
        f"A chat message, one at a time on an idle instance ({ROUND_TRIPS}): `user_message` "
        "until the thread's other follower has it\n(stored in PostgreSQL, appended to the "
        f"channel, relayed by Pub/Sub): p50 {message_p50:.2f} ms, p99 {message_p99:.2f} ms; "
        f"`ping` until its `pong`\non the same connection (the gateway's floor): p50 "
        f"{ping_p50:.2f} ms, p99 {ping_p99:.2f} ms.\n\n"
        f"Rate-limit decision (`FixedWindow.hit`, {ROUNDS * LIMITER_CALLS:,} sequential, in "
        f"rounds alternating with the raw call): "
        f"{apex_rate:,.0f}/s;\nraw `EVALSHA` of the same script: {raw_rate:,.0f}/s "
        f"({apex_rate / raw_rate:.2f}x).",
    )
