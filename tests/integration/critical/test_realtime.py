"""Tier 3, realtime: the WebSocket gateway at `/ws` on real `apex serve` processes sharing
one PostgreSQL and one Redis, driven by a real WebSocket client (`websockets`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio as aioredis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from apex.kit.channels import Channels, envelope, thread_channel
from tests.harness import ApexServer, ApexWorker, PostgresCluster, RedisServer
from tests.harness.nginx import NginxServer
from tests.integration.critical.conftest import bearer, database_name, set_tier, signup

pytestmark = pytest.mark.timeout(300)


def instance_of(server: ApexServer) -> str:
    """How the gateway names the `apex serve` process holding a connection."""
    assert server.process is not None
    return f"{socket.gethostname()}:{server.process.pid}"


def ws_url(server: ApexServer) -> str:
    return server.base_url.replace("http://", "ws://") + "/ws"


WAIT = 10.0  # seconds a test waits for a frame that must come


async def receive(ws: ClientConnection) -> dict[str, Any]:
    frame: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
    return frame


async def receive_type(ws: ClientConnection, kind: str) -> dict[str, Any]:
    """The next frame of this type (others are skipped)."""
    async with asyncio.timeout(WAIT):
        while True:
            frame = await receive(ws)
            if frame["type"] == kind:
                return frame


async def closed_with(ws: ClientConnection) -> tuple[int | None, float]:
    """The close code the server sent, and how long it took to come."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(WAIT):
            while True:
                await ws.recv()
    except ConnectionClosed as closed:
        received = closed.rcvd
        return (received.code if received else None), time.monotonic() - started


async def open_session(
    server: ApexServer, token: str, *, keepalive: bool = True
) -> ClientConnection:
    """An authenticated connection. `keepalive=False` for a client that sends faster than the
    server handles: past the 512 KiB the server reads ahead of its handling, the client's
    own pings wait behind its backlog (TCP backpressure) and would time out the client."""
    # Without keepalive the client may also not read for long (a publisher ignoring its
    # acks): an unbounded receive queue keeps its reader answering the server's pings.
    ws = await connect(
        ws_url(server),
        ping_interval=20 if keepalive else None,
        max_queue=16 if keepalive else None,
    )
    await ws.send(json.dumps({"type": "auth", "token": token}))
    established = await receive_type(ws, "connection_established")
    assert established["seq"] is None
    return ws


def account(server: ApexServer) -> dict[str, Any]:
    with server.client() as client:
        answer = signup(client)
        headers = bearer(answer)
        me = client.get("/api/v1/users/me", headers=headers).json()
    return {**answer.json(), "headers": headers, "user_id": me["id"]}


def test_websocket_auth_integration(
    database_url: str,
    redis_server: RedisServer,
    start_apex: Callable[..., ApexServer],
) -> None:
    """No token, a bad signature, an expired and a revoked token are closed with 1008 in the
    documented times; a valid token (first frame or subprotocol) is greeted with its user
    and organisation; an organisation's token cannot follow another's thread."""
    a = start_apex(database_url, redis_server.url)
    b = start_apex(database_url, redis_server.url, access_token_ttl_seconds="3",
                   token_leeway_seconds="0")  # fmt: skip
    alice, bob = account(a), account(a)

    async def scenario() -> None:
        # No token at all: closed when the 5 s auth deadline passes.
        silent = await connect(ws_url(a))
        code, waited = await closed_with(silent)
        assert (code, 4.5 <= waited <= 7.0) == (1008, True), waited

        # A first frame that is not `auth`, and a forged signature: closed at once.
        for first in (
            {"type": "ping"},
            {"type": "auth", "token": alice["access_token"][:-4] + "AAAA"},
        ):
            ws = await connect(ws_url(a))
            await ws.send(json.dumps(first))
            code, waited = await closed_with(ws)
            assert (code, waited < 2) == (1008, True)

        # Valid, as the first frame and as a subprotocol, on either instance.
        ws = await connect(ws_url(b))
        await ws.send(json.dumps({"type": "auth", "token": alice["access_token"]}))
        hello = await receive(ws)
        assert hello["type"] == "connection_established"
        assert hello["payload"] == {"user_id": alice["user_id"],
                                    "organization_id": alice["organization_id"],
                                    "instance": instance_of(b)}  # fmt: skip
        via_subprotocol = await connect(
            ws_url(a),
            subprotocols=[f"bearer.{bob['access_token']}"],  # type: ignore[list-item]
        )
        hello = await receive(via_subprotocol)
        assert hello["payload"]["user_id"] == bob["user_id"]

        # Expired mid-connection: a token b issued (valid 3 s) is closed when it expires.
        short_lived = await asyncio.to_thread(account, b)
        expiring = await open_session(b, short_lived["access_token"])
        code, waited = await closed_with(expiring)
        assert (code, waited < 4.5) == (1008, True), waited

        # Revoked on another instance: logging out through a closes the socket held by b.
        async with httpx.AsyncClient(base_url=a.base_url) as http:
            logout = await http.post("/api/v1/auth/logout", headers=alice["headers"])
        assert logout.status_code == 204
        code, waited = await closed_with(ws)
        assert (code, waited < 2) == (1008, True), waited
        refused = await connect(ws_url(b))
        await refused.send(json.dumps({"type": "auth", "token": alice["access_token"]}))
        assert (await closed_with(refused))[0] == 1008

        # Bob's organisation cannot see, follow or write to a thread of another one.
        carol = account(a)
        theirs = await open_session(a, carol["access_token"])
        await theirs.send(json.dumps({"type": "create_thread", "payload": {"title": "Ours"}}))
        created = await receive_type(theirs, "thread_created")
        thread_id = created["payload"]["thread"]["id"]
        for frame in (
            {"type": "switch_thread", "id": "s1", "payload": {"thread_id": thread_id}},
            {"type": "resume", "id": "r1",
             "payload": {"channels": {f"thread:{thread_id}": {"seq": 0}}}},
            {"type": "user_message", "id": "m1",
             "payload": {"thread_id": thread_id, "content": "hello?"}},
            {"type": "get_thread_history", "id": "h1", "payload": {"thread_id": thread_id}},
        ):  # fmt: skip
            await via_subprotocol.send(json.dumps(frame))
            refused_frame = await receive_type(via_subprotocol, "error")
            assert refused_frame["reply_to"] == frame["id"]
            assert (
                "No thread" in refused_frame["payload"]["reason"]
                or "No channel" in (refused_frame["payload"]["reason"])
            )
        await theirs.send(json.dumps({"type": "get_thread_history", "id": "h2",
                                      "payload": {"thread_id": thread_id}}))  # fmt: skip
        own = await receive_type(theirs, "thread_history")
        assert own["payload"]["messages"] == []  # bob's message was not stored
        for open_socket in (via_subprotocol, theirs):
            await open_socket.close()

    asyncio.run(scenario())


def on_tier(
    server: ApexServer, postgres: PostgresCluster, database_url: str, tier: str
) -> dict[str, Any]:
    """A new account whose organisation is on `tier` before any instance cached its plan."""
    with server.client() as client:
        answer = signup(client)
        set_tier(postgres, database_url, answer.json()["organization_id"], tier)
        headers = bearer(answer)
        me = client.get("/api/v1/users/me", headers=headers).json()
    return {**answer.json(), "headers": headers, "user_id": me["id"]}


async def new_thread(ws: ClientConnection) -> str:
    await ws.send(json.dumps({"type": "create_thread", "payload": {"title": "Ordering"}}))
    thread_id: str = (await receive_type(ws, "thread_created"))["payload"]["thread"]["id"]
    return thread_id


async def follow_new_thread(ws: ClientConnection) -> tuple[str, int]:
    """Create a thread and follow it: its id and the channel's seq when following began."""
    thread_id = await new_thread(ws)
    return thread_id, await switch(ws, thread_id)


async def switch(ws: ClientConnection, thread_id: str) -> int:
    await ws.send(json.dumps({"type": "switch_thread", "payload": {"thread_id": thread_id}}))
    switched = await receive_type(ws, "thread_switched")
    return int(switched["payload"]["seq"])


async def collect(
    ws: ClientConnection, channel: str, done: Callable[[list[dict[str, Any]]], bool]
) -> list[dict[str, Any]]:
    """The channel's events this connection receives, until `done(events)`."""
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(120):
        while not done(events):
            frame = json.loads(await ws.recv())
            if frame.get("channel") == channel:
                events.append(frame)
    return events


RUN_END = {"final_report", "agent_error"}


def test_websocket_message_ordering_integration(
    postgres: PostgresCluster,
    database_url: str,
    redis_server: RedisServer,
    start_apex: Callable[..., ApexServer],
    start_worker: Callable[..., ApexWorker],
) -> None:
    """50 messages sent as fast as one client can, while an agent run started through
    another instance emits its events from a worker into the same thread: both followers
    (one per instance) receive every event once, `seq` rising by exactly 1, the messages in
    the order sent and the run's events in the order the run stream holds them."""
    a = start_apex(database_url, redis_server.url)
    b = start_apex(database_url, redis_server.url)
    start_worker(database_url, redis_server.url)
    owner = on_tier(a, postgres, database_url, "mid")  # 300 messages a minute
    sent = [f"message {n:02d}" for n in range(50)]

    async def scenario() -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
        writer = await open_session(a, owner["access_token"])
        reader = await open_session(b, owner["access_token"])
        thread_id, start = await follow_new_thread(writer)
        assert await switch(reader, thread_id) == start
        channel = f"thread:{thread_id}"

        def finished(events: list[dict[str, Any]]) -> bool:
            messages = sum(e["type"] == "thread_message" for e in events)
            return messages == len(sent) and any(e["type"] in RUN_END for e in events)

        collectors = [
            asyncio.create_task(collect(ws, channel, finished)) for ws in (writer, reader)
        ]
        async with httpx.AsyncClient(base_url=b.base_url) as http:
            run = await http.post("/api/v1/agents/runs", headers=owner["headers"],
                                  json={"question": "Where does the money go?",
                                        "thread_id": thread_id})  # fmt: skip
            assert run.status_code == 202, run.text
            for text in sent:  # not waiting for any answer
                await writer.send(json.dumps({"type": "user_message", "id": text, "payload": {
                    "thread_id": thread_id, "content": text, "start_agent": False}}))  # fmt: skip
            got_writer, got_reader = await asyncio.gather(*collectors)
            stream = await http.get(f"/api/v1/agents/runs/{run.json()['id']}/events",
                                    headers=owner["headers"])  # fmt: skip
        for ws in (writer, reader):
            await ws.close()
        return got_writer, got_reader, [e["type"] for e in stream.json()]

    got_writer, got_reader, run_types = asyncio.run(scenario())
    for got in (got_writer, got_reader):
        seqs = [e["seq"] for e in got]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # no gap, no duplicate
        assert [
            e["payload"]["message"]["content"] for e in got if e["type"] == "thread_message"
        ] == sent
        assert [e["type"] for e in got if "run_id" in e] == run_types
    assert [e["id"] for e in got_writer] == [e["id"] for e in got_reader]
    stored = postgres.sql(
        "SELECT count(*) FROM messages WHERE role = 'user' AND content LIKE 'message %'",
        database_name(database_url),
    )
    assert int(stored) == len(sent)


LIMITS = {"free": 10, "early": 100, "mid": 300, "enterprise": 1000}  # BRIEF §4b, by hand


async def next_minute() -> None:
    """Sleep into the first second of the next UTC minute: the limiter's windows are whole
    minutes, so a burst sent from there on falls in one window."""
    await asyncio.sleep(60 - time.time() % 60 + 0.2)


async def burst(
    ws: ClientConnection, thread_id: str, ids: list[str]
) -> dict[str, list[dict[str, Any]]]:
    """Send a message per id without waiting for answers (reading them meanwhile, as a
    client must: one that stops reading is disconnected); the answer to each: its
    `thread_message` (accepted) or its `rate_limited` (refused)."""
    answers: dict[str, list[dict[str, Any]]] = {"accepted": [], "refused": []}
    wanted = set(ids)

    async def read() -> None:
        async with asyncio.timeout(60):
            while wanted:
                frame = json.loads(await ws.recv())
                if frame["type"] == "thread_message" and frame["payload"]["client_id"] in wanted:
                    wanted.discard(frame["payload"]["client_id"])
                    answers["accepted"].append(frame)
                elif frame["type"] == "rate_limited" and frame.get("reply_to") in wanted:
                    wanted.discard(frame["reply_to"])
                    answers["refused"].append(frame)

    reader = asyncio.create_task(read())
    for frame_id in ids:
        await ws.send(json.dumps({"type": "user_message", "id": frame_id, "payload": {
            "thread_id": thread_id, "content": frame_id, "start_agent": False}}))  # fmt: skip
    await reader
    return answers


def test_websocket_rate_limiting_integration(
    postgres: PostgresCluster,
    database_url: str,
    redis_server: RedisServer,
    start_apex: Callable[..., ApexServer],
) -> None:
    """Per tier, one person sending twice their plan's messages a minute over two
    connections on two instances: exactly the limit is stored, the rest is refused with
    `retry_after` (and an upgrade hint below Enterprise); in the next minute they are served
    again. Someone who keeps sending far past the limit is disconnected (4429)."""
    a = start_apex(database_url, redis_server.url, enforce_api_limits="true")
    b = start_apex(database_url, redis_server.url, enforce_api_limits="true")
    people = {tier: on_tier(a, postgres, database_url, tier) for tier in LIMITS}
    abuser = on_tier(a, postgres, database_url, "free")
    database = database_name(database_url)

    async def one_tier(tier: str, person: dict[str, Any]) -> dict[str, Any]:
        # Bursts of up to 1,000 frames each: no client keepalive (see open_session).
        here = await open_session(a, person["access_token"], keepalive=False)
        there = await open_session(b, person["access_token"], keepalive=False)
        thread_id, _ = await follow_new_thread(here)
        await switch(there, thread_id)
        return {"tier": tier, "sockets": (here, there), "thread_id": thread_id}

    async def twice_the_limit(setup: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
        half = LIMITS[setup["tier"]]
        ids = [[f"{setup['tier']}-{side}{n}" for n in range(half)] for side in "ab"]
        halves = await asyncio.gather(
            *(
                burst(ws, setup["thread_id"], mine)
                for ws, mine in zip(setup["sockets"], ids, strict=True)
            )
        )
        return {key: halves[0][key] + halves[1][key] for key in ("accepted", "refused")}

    async def scenario() -> dict[str, Any]:
        setups = [await one_tier(tier, person) for tier, person in people.items()]
        abusive = await open_session(b, abuser["access_token"], keepalive=False)
        abuse_thread, _ = await follow_new_thread(abusive)
        await next_minute()
        # Twice the limit, half through each instance, every tier at once.
        answers = await asyncio.gather(*(twice_the_limit(setup) for setup in setups))
        results = {setup["tier"]: answer for setup, answer in zip(setups, answers, strict=True)}
        spam = {"thread_id": abuse_thread, "content": "spam", "start_agent": False}
        for n in range(3 * LIMITS["free"] + 5):
            with contextlib.suppress(ConnectionClosed):
                frame = {"type": "user_message", "id": f"x{n}", "payload": spam}
                await abusive.send(json.dumps(frame))
        abuse_code, _ = await closed_with(abusive)
        await next_minute()
        again = {}
        for setup in setups:
            here, _ = setup["sockets"]
            again[setup["tier"]] = await burst(here, setup["thread_id"], [f"{setup['tier']}-later"])
            for ws in setup["sockets"]:
                await ws.close()
        return {"results": results, "again": again, "abuse_code": abuse_code}

    outcome = asyncio.run(scenario())
    for tier, limit in LIMITS.items():
        result = outcome["results"][tier]
        print(f"\n{tier}: sent {2 * limit}, accepted {len(result['accepted'])}, "
              f"refused {len(result['refused'])}")  # fmt: skip
        assert (len(result["accepted"]), len(result["refused"])) == (limit, limit)
        organization = people[tier]["organization_id"]
        stored = postgres.sql(
            f"SELECT count(*) FROM messages WHERE organization_id = '{organization}' "  # noqa: S608
            f"AND role = 'user' AND content LIKE '{tier}-%'",
            database,
        )
        assert int(stored) == limit + 1  # the limit, and the one sent in the next minute
        for refusal in result["refused"]:
            assert 0 < refusal["payload"]["retry_after"] <= 60
            assert refusal["payload"]["limit"] == limit
            assert ("upgrade" in refusal["payload"]) == (tier != "enterprise")
        assert len(outcome["again"][tier]["accepted"]) == 1
    assert outcome["abuse_code"] == 4429


EVENTS = 1_000
CLIENTS = 200


# How connecting to an instance that is dying, or dead, can fail.
REFUSED = (OSError, EOFError, ConnectionClosed, InvalidHandshake, TimeoutError)


class Follower:
    """A client following one thread through drops and a dead instance: it reconnects to
    an instance still alive and resumes from the last `seq` it got."""

    def __init__(self, number: int, servers: list[ApexServer], token: str, channel: str) -> None:
        self.number = number
        self.servers = servers
        self.token = token
        self.channel = channel
        self.seqs: list[int] = []
        self.epoch: str | None = None
        self.reconnects = 0
        self.rng = random.Random(number)

    async def run(self) -> None:
        first = True
        while len(self.seqs) < EVENTS:
            ws = await self.connect(self.servers[self.number % 2] if first else None)
            first = False
            resume = {self.channel: {"seq": self.seqs[-1] if self.seqs else 0, "epoch": self.epoch}}
            await ws.send(json.dumps({"type": "resume", "payload": {"channels": resume}}))
            drop_after = self.rng.randint(50, 2_000)  # a client that drops by itself, sometimes
            try:
                # Generous: on a loaded machine one instance takes long to send 200 clients
                # their 1,000 events; a stalled stream still fails, within minutes.
                async with asyncio.timeout(240):
                    while len(self.seqs) < EVENTS:
                        frame = json.loads(await ws.recv())
                        if frame["type"] == "resumed":
                            assert frame["payload"]["recovered"], frame
                            self.epoch = frame["payload"]["epoch"]
                        elif frame.get("channel") == self.channel:
                            self.seqs.append(frame["seq"])
                            if len(self.seqs) == drop_after:
                                await ws.close()
            except ConnectionClosed:
                self.reconnects += 1
                continue
            await ws.close()

    async def connect(self, preferred: ApexServer | None) -> ClientConnection:
        candidates = [preferred] if preferred else self.rng.sample(self.servers, len(self.servers))
        async with asyncio.timeout(30):
            while True:
                for server in candidates:
                    if not server.process or not server.process.alive():
                        continue
                    with contextlib.suppress(*REFUSED):
                        return await open_session(server, self.token)
                candidates = self.servers
                await asyncio.sleep(0.1)


def test_websocket_reconnect_recovery_integration(
    database_url: str, fresh_redis: RedisServer, start_apex: Callable[..., ApexServer]
) -> None:
    """200 clients over two instances follow a thread while 1,000 messages are posted;
    clients drop their connections at random and one instance is killed (-9) half-way:
    every client ends with events 1..1000, each once, in order. Then Redis loses its data
    (FLUSHALL): the next resume is answered `recovered: false`."""
    a = start_apex(database_url, fresh_redis.url)
    b = start_apex(database_url, fresh_redis.url)
    owner = account(b)

    async def scenario() -> tuple[list[Follower], dict[str, Any]]:
        publisher = await open_session(b, owner["access_token"], keepalive=False)
        thread_id = await new_thread(publisher)  # not followed: it reads nothing more
        channel = f"thread:{thread_id}"
        followers = [Follower(n, [a, b], owner["access_token"], channel) for n in range(CLIENTS)]
        following = [asyncio.create_task(f.run()) for f in followers]
        await asyncio.sleep(2)  # let them connect (and resume from 0: nothing missed anyway)
        for n in range(EVENTS):
            message = {"thread_id": thread_id, "content": f"event {n + 1}", "start_agent": False}
            await publisher.send(json.dumps({"type": "user_message", "payload": message}))
            if n == EVENTS // 2:
                await asyncio.to_thread(a.process.kill)  # type: ignore[union-attr]
            await asyncio.sleep(0.002)
        await asyncio.gather(*following)
        witness = await open_session(b, owner["access_token"])  # connected across the loss
        assert await switch(witness, thread_id) == EVENTS
        # Redis loses everything: a client that resumes cannot be told what it missed.
        redis.Redis.from_url(fresh_redis.url).flushall()
        late = await open_session(b, owner["access_token"])
        resume = {channel: {"seq": followers[0].seqs[-1], "epoch": followers[0].epoch}}
        await late.send(json.dumps({"type": "resume", "payload": {"channels": resume}}))
        answer = await receive_type(late, "resumed")
        # The channel starts again: both hear its first event; the connected one is told
        # first that what came before is gone.
        # A fresh publisher: the first one sent 1,000 messages without reading their acks,
        # and on a loaded machine the server may have let it go as a slow reader (1013).
        with contextlib.suppress(ConnectionClosed):
            await publisher.close()
        publisher = await open_session(b, owner["access_token"], keepalive=False)
        message = {"thread_id": thread_id, "content": "after the loss", "start_agent": False}
        await publisher.send(json.dumps({"type": "user_message", "payload": message}))
        told = await receive_type(witness, "resumed")
        assert (told["payload"]["recovered"], told["payload"]["channel"]) == (False, channel)
        for ws in (witness, late):
            first = await receive_type(ws, "thread_message")
            assert (first["seq"], first["payload"]["message"]["content"]) == (1, "after the loss")
        for ws in (late, publisher, witness):
            await ws.close()
        return followers, answer

    followers, after_flush = asyncio.run(scenario())
    print(f"\n{CLIENTS} clients, {sum(f.reconnects for f in followers)} reconnections")
    for follower in followers:
        assert follower.seqs == list(range(1, EVENTS + 1)), follower.number
    assert sum(f.reconnects for f in followers) >= CLIENTS // 2  # the killed half, at least
    assert after_flush["payload"]["recovered"] is False


class UserClient:
    """One of a person's connections through nginx; it records the person's channel."""

    def __init__(self, base: str, person: dict[str, Any]) -> None:
        self.base = base
        self.person = person
        self.channel = f"user:{person['user_id']}"
        self.instance = ""
        self.seqs: list[int] = []
        self.types: list[str] = []
        self.ws: ClientConnection | None = None
        self.start = 0

    async def open(self, resume_from: int | None = None) -> None:
        self.ws = await connect(self.base + "/ws")
        await self.ws.send(json.dumps({"type": "auth", "token": self.person["access_token"]}))
        hello = await receive_type(self.ws, "connection_established")
        self.instance = hello["payload"]["instance"]
        if resume_from is not None:
            position = {self.channel: {"seq": resume_from}}
            await self.ws.send(json.dumps({"type": "resume", "payload": {"channels": position}}))

    async def read_until(self, count: int) -> None:
        """Record the person's channel events until `count` have come since it connected."""
        assert self.ws is not None
        async with asyncio.timeout(60):
            while len(self.seqs) < count:
                frame = json.loads(await self.ws.recv())
                if frame.get("channel") == self.channel:
                    self.seqs.append(frame["seq"])
                    self.types.append(frame["payload"]["thread"]["title"])


def test_websocket_load_balancing_integration(
    database_url: str,
    redis_server: RedisServer,
    start_apex: Callable[..., ApexServer],
) -> None:
    """Three instances behind the production nginx configuration; 100 connections of 10
    people through it. Every instance holds some; an event for a person reaches all ten of
    their connections wherever they are held; when one instance is killed, its clients
    reconnect through nginx to the others and resume without a gap."""
    servers = [start_apex(database_url, redis_server.url) for _ in range(3)]
    nginx = NginxServer([s.port for s in servers]).start()
    people = [account(servers[0]) for _ in range(10)]
    base = nginx.base_url.replace("http://", "ws://")

    async def scenario() -> list[UserClient]:
        clients = [UserClient(base, person) for person in people for _ in range(10)]
        for client in clients:
            await client.open()
        split = Counter(client.instance for client in clients)
        print(f"\nconnections per instance: {dict(split)}")
        assert set(split) == {instance_of(s) for s in servers}
        # Each person creates a thread from one connection: all ten hear of it.
        for first in clients[::10]:
            assert first.ws is not None
            await first.ws.send(json.dumps({"type": "create_thread",
                                            "payload": {"title": "before"}}))  # fmt: skip
        await asyncio.gather(*(client.read_until(1) for client in clients))
        # One instance dies; its clients come back through nginx and resume from their seq.
        victim = servers[1]
        assert victim.process is not None
        victim.process.kill()
        for client in clients:
            if client.instance == instance_of(victim):
                await client.open(resume_from=client.seqs[-1])
                assert client.instance != instance_of(victim)
        for first in clients[::10]:
            assert first.ws is not None
            for title in ("after 1", "after 2"):
                await first.ws.send(json.dumps({"type": "create_thread",
                                                "payload": {"title": title}}))  # fmt: skip
        await asyncio.gather(*(client.read_until(3) for client in clients))
        for client in clients:
            assert client.ws is not None
            await client.ws.close()
        return clients

    clients = asyncio.run(scenario())
    for client in clients:
        assert client.types == ["before", "after 1", "after 2"]
        assert client.seqs == list(range(client.seqs[0], client.seqs[0] + 3))


def test_sigterm_drains_websockets_with_1013(
    database_url: str, redis_server: RedisServer, start_apex: Callable[..., ApexServer]
) -> None:
    """A server told to stop (SIGTERM, as a rolling deploy does) sends what it has queued,
    then closes its connections with 1013 so that clients reconnect elsewhere, instead of
    uvicorn's abrupt 1012; then it exits."""
    server = start_apex(database_url, redis_server.url)
    person = account(server)

    async def scenario() -> tuple[int | None, float, list[str]]:
        ws = await open_session(server, person["access_token"])
        thread_id = await new_thread(ws)
        await switch(ws, thread_id)
        for n in range(20):
            message = {"thread_id": thread_id, "content": f"m{n}", "start_agent": False}
            await ws.send(json.dumps({"type": "user_message", "payload": message}))
        contents: list[str] = []
        while len(contents) < 20:
            frame = await receive_type(ws, "thread_message")
            contents.append(frame["payload"]["message"]["content"])
        assert server.process is not None
        stopping = asyncio.create_task(asyncio.to_thread(server.process.terminate))
        code, waited = await closed_with(ws)
        await stopping
        return code, waited, contents

    code, waited, contents = asyncio.run(scenario())
    assert contents == [f"m{n}" for n in range(20)]
    assert (code, waited < 6) == (1013, True), waited
    assert server.process is not None
    assert not server.process.alive()


async def stalled_session(server: ApexServer, token: str, thread_id: str) -> ClientConnection:
    """A connection following `thread_id` whose client then stops reading: a small receive
    buffer, and a client library that stops reading its socket once a frame waits unread."""
    host, port = server.base_url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024)  # before connect: the window
    sock.connect((host, int(port)))
    sock.setblocking(False)
    ws = await connect(ws_url(server), sock=sock, max_queue=1, ping_interval=None)
    await ws.send(json.dumps({"type": "auth", "token": token}))
    await receive_type(ws, "connection_established")
    await switch(ws, thread_id)
    return ws


def largest_send_buffer() -> int:
    """The most a TCP socket's send buffer may grow to on this machine (Linux's tcp_wmem)."""
    try:
        return int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, IndexError, ValueError):
        return 4 * 1024 * 1024  # Linux's default


async def thread_with_stalled_follower(
    server: ApexServer, token: str
) -> tuple[ClientConnection, ClientConnection, str, int]:
    """A new thread followed by a reading session and a stalled one (`stalled_session`):
    both sessions, the thread's id and its channel's seq when they began following."""
    reader = await open_session(server, token)
    thread_id, start = await follow_new_thread(reader)
    return reader, await stalled_session(server, token, thread_id), thread_id, start


async def publish_partial(channels: Channels, thread_id: str, n: int, text: str) -> None:
    """Publish the `n`th partial result of about len(text) bytes to the thread's channel."""
    data = envelope("partial_result", {"n": n, "text": text}, datetime.now(UTC),
                    thread_id=thread_id)  # fmt: skip
    await channels.publish(thread_channel(thread_id), data)


def test_a_follower_that_stops_reading_is_closed_with_1013_and_holds_no_one_back(
    database_url: str, redis_server: RedisServer, start_apex: Callable[..., ApexServer]
) -> None:
    """Backpressure: once a connection's send queue is full because its client stopped
    reading, the gateway closes it with 1013 instead of queueing its events without bound;
    a follower of the same thread on the same instance still gets every event, in order."""
    server = start_apex(database_url, redis_server.url)
    person = account(server)
    published = 3_000  # of about 4 KB: more than the socket buffers and the 1,000 queued
    text = "x" * 4_000

    async def scenario() -> tuple[list[int], list[int], int | None, str]:
        reader, stalled, thread_id, start = await thread_with_stalled_follower(
            server, person["access_token"]
        )
        channel = thread_channel(thread_id)
        client = aioredis.Redis.from_url(redis_server.url)
        channels = Channels(client)
        everything: list[int] = []
        progress = asyncio.Condition()

        async def read_all() -> None:
            try:
                async with asyncio.timeout(120):
                    while len(everything) < published:
                        frame = json.loads(await reader.recv())
                        if frame.get("channel") == channel:
                            everything.append(frame["seq"] - start)
                            async with progress:
                                progress.notify_all()
            finally:
                async with progress:
                    progress.notify_all()

        read = asyncio.create_task(read_all())
        for n in range(published):
            await publish_partial(channels, thread_id, n, text)

            # The reader keeps up (a loaded machine must not make it the slow one); the
            # stalled connection falls behind, since nothing reads it.
            def caught_up(behind_by_at_most_300: int = n + 1 - 300) -> bool:
                return len(everything) >= behind_by_at_most_300 or read.done()

            async with progress:
                await progress.wait_for(caught_up)
        await client.aclose()
        await read
        # Only now does the stalled client read: what the server had sent before giving up
        # on it, then its close frame.
        got: list[int] = []
        received = None  # the close frame, if one comes
        with contextlib.suppress(TimeoutError):
            try:
                async with asyncio.timeout(30):
                    while True:
                        frame = json.loads(await stalled.recv())
                        if frame.get("channel") == channel:
                            got.append(frame["seq"] - start)
            except ConnectionClosed as closed:
                received = closed.rcvd
        await reader.close()
        return (
            everything,
            got,
            received.code if received else None,
            received.reason if received else "",
        )

    everything, got, code, reason = asyncio.run(scenario())
    assert everything == list(range(1, published + 1))
    assert (code, "too slow" in reason) == (1013, True), (code, reason)
    assert 0 < len(got) < published, len(got)
    assert got == list(range(1, len(got) + 1))  # what it was sent came in order, no gap


def test_a_follower_that_pauses_reading_then_reads_again_gets_every_event_in_order(
    database_url: str, redis_server: RedisServer, start_apex: Callable[..., ApexServer]
) -> None:
    """A client that stops reading for a while fills its socket's buffers, so the gateway's
    writes to it have to wait; once it reads again it gets every event published meanwhile,
    in order, with no gap or duplicate, and is not closed (it never fell 1,000 behind)."""
    server = start_apex(database_url, redis_server.url)
    person = account(server)
    # 600 events of twice in all what the kernel's send buffer may grow to (4 MB here; at
    # least 16 KB each), so the gateway's writes wait; fewer than the 1,000 it queues.
    published = 600
    text = "x" * max(16_000, 2 * largest_send_buffer() // published)

    async def scenario() -> list[int]:
        owner, paused, thread_id, start = await thread_with_stalled_follower(
            server, person["access_token"]
        )
        channel = thread_channel(thread_id)
        client = aioredis.Redis.from_url(redis_server.url)
        channels = Channels(client)
        for n in range(published):
            await publish_partial(channels, thread_id, n, text)
        await client.aclose()
        await asyncio.sleep(0.5)  # the gateway meets the full buffers before anyone reads
        got: list[int] = []
        async with asyncio.timeout(60):
            while not got or got[-1] < published:  # until the last one
                frame = json.loads(await paused.recv())
                if frame.get("channel") == channel:
                    got.append(frame["seq"] - start)
        await paused.close()
        await owner.close()
        return got

    assert asyncio.run(scenario()) == list(range(1, published + 1))
