"""Tier 3, realtime: the WebSocket gateway at `/ws` on real `apex serve` processes sharing
one PostgreSQL and one Redis, driven by a real WebSocket client (`websockets`)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.harness import ApexServer, ApexWorker, PostgresCluster, RedisServer
from tests.integration.critical.conftest import bearer, database_name, set_tier, signup

pytestmark = pytest.mark.timeout(300)


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


async def open_session(server: ApexServer, token: str) -> ClientConnection:
    ws = await connect(ws_url(server))
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
                                    "organization_id": alice["organization_id"]}  # fmt: skip
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
        for socket in (via_subprotocol, theirs):
            await socket.close()

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


async def follow_new_thread(ws: ClientConnection) -> tuple[str, int]:
    """Create a thread and follow it: its id and the channel's seq when following began."""
    await ws.send(json.dumps({"type": "create_thread", "payload": {"title": "Ordering"}}))
    thread_id = (await receive_type(ws, "thread_created"))["payload"]["thread"]["id"]
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
