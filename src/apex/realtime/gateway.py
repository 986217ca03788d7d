"""`/ws`: authenticate, follow the person's channel, answer the client's frames
(`realtime.handlers`), and close the connection when its token expires or is revoked, when
the client abuses its rate limit, or when the server drains on SIGTERM. Each connection's
writer (`realtime.connection`) sends every event of a followed channel once and in `seq`
order, including those missed while disconnected (`resume`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any

import structlog
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from opentelemetry.trace import SpanKind
from pydantic import ValidationError

from apex.identity.service import role_in
from apex.identity.tokens import AccessClaims, decode_access_token
from apex.kit.channels import envelope, user_channel
from apex.kit.errors import ApexError, Unauthorized
from apex.observability import tracing
from apex.realtime import protocol
from apex.realtime.connection import Connection
from apex.realtime.handlers import HANDLERS, within_rate
from apex.realtime.hub import Hub
from apex.realtime.protocol import ClientFrame

log = structlog.get_logger(__name__)
router = APIRouter()

REVALIDATE_SECONDS = 60.0  # the token is checked again (expiry, denylist) at least this often
UNCOUNTED = frozenset({"auth"})  # every other frame counts against the plan's limit
# Frames read ahead of their handling, per connection, counted in characters of their text
# (ASCII: bytes; at most 4 bytes each otherwise): a burst of a full minute's messages on the
# largest plan (1,000 of a few hundred characters) fits; a flood of large frames does not.
INBOX_BYTES = 512 * 1024
INSTANCE = f"{socket.gethostname()}:{os.getpid()}"  # which `apex serve` holds a connection


@router.websocket("/ws")
async def gateway(websocket: WebSocket) -> None:
    state = websocket.app.state
    token, subprotocol = _offered_token(websocket)
    await websocket.accept(subprotocol=subprotocol)
    try:
        if token is None:
            token = await _first_frame_token(websocket)
        claims = await _authenticate(websocket, token)
    except (Unauthorized, TimeoutError, ValidationError, ValueError) as refused:
        reason = refused.detail if isinstance(refused, Unauthorized) else "authenticate first"
        await websocket.close(protocol.POLICY, reason[:120])
        return
    except WebSocketDisconnect:
        return
    if state.hub.draining:
        await websocket.close(protocol.TRY_AGAIN_LATER, "server restarting: try another")
        return
    connection = Connection(websocket, state.hub, state.channels, claims)
    await _serve(connection)


async def _serve(connection: Connection) -> None:
    state = connection.websocket.app.state
    state.hub.connections.add(connection)
    state.metrics.websocket_connections.add(1)
    writer = asyncio.create_task(connection.send_all())
    tasks = [
        writer,
        asyncio.create_task(_receive_all(connection)),
        asyncio.create_task(_revalidate(connection)),
        asyncio.create_task(connection.closed.wait()),
    ]
    try:
        connection.reply(
            envelope(
                "connection_established",
                {"user_id": str(connection.user_id),
                 "organization_id": str(connection.organization_id),
                 "instance": INSTANCE},
                state.clock.now(),
            )
        )  # fmt: skip
        await connection.follow(user_channel(connection.user_id))
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await _stop(tasks)
        for channel in list(connection.cursors):
            await connection.unfollow(channel)
        state.hub.connections.discard(connection)
        state.metrics.websocket_connections.add(-1)
        connection.finished.set()
        if connection.closed.is_set():
            with contextlib.suppress(Exception):
                await connection.websocket.close(connection.close_code, connection.close_reason)


async def drain(hub: Hub, seconds: float) -> None:
    """Close every connection of this process with 1013 once its queued frames are sent
    (SIGTERM: `install_drain`), and refuse new ones meanwhile."""
    hub.draining = True
    deadline = asyncio.get_running_loop().time() + seconds
    connections = list(hub.connections)
    results = await asyncio.gather(
        *(connection.drain(deadline) for connection in connections), return_exceptions=True
    )
    left = sum(isinstance(result, BaseException) for result in results)
    log.info("websockets_drained", connections=len(connections), not_in_time=left)


def install_drain(
    hub: Hub,
    seconds: float,
    *,
    announce: Callable[[], None] = lambda: None,
    grace: float = 0.0,
) -> Callable[[], None]:
    """On SIGTERM: `announce` (readiness starts failing), keep serving for `grace` seconds
    so a load balancer stops routing here, drain the WebSocket connections, and only then
    hand over to the server's own shutdown, which would stop listening and close them with
    1012 at once. Returns what restores the previous handler. Only under a server that
    handles SIGTERM itself (uvicorn), in the main thread."""
    previous = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is not threading.main_thread() or not callable(previous):
        return lambda: None
    loop = asyncio.get_running_loop()
    forward: Callable[[int, FrameType | None], Any] = previous
    received = False

    async def drain_then_stop(signum: int, frame: FrameType | None) -> None:
        try:
            announce()
            await asyncio.sleep(grace)
            await drain(hub, seconds)
        finally:
            forward(signum, frame)

    running: set[asyncio.Task[None]] = set()  # the loop keeps only weak references

    def start_drain(signum: int, frame: FrameType | None) -> None:
        task = loop.create_task(drain_then_stop(signum, frame))
        running.add(task)
        task.add_done_callback(running.discard)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        nonlocal received
        if received:  # a second SIGTERM: stop now
            forward(signum, frame)
            return
        received = True
        loop.call_soon_threadsafe(start_drain, signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)

    def restore() -> None:
        signal.signal(signal.SIGTERM, previous)

    return restore


async def _stop(tasks: list[asyncio.Task[Any]]) -> None:
    """Cancel the connection's tasks and wait for them, cancelling again any still running:
    a library below may swallow one cancellation (a Redis or database call interrupted at
    the wrong moment), and a task left running would hold the connection open."""
    for _ in range(3):
        pending = [task for task in tasks if not task.done()]
        if not pending:
            return
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=1)
    log.warning("websocket_task_left_running")


def _offered_token(websocket: WebSocket) -> tuple[str | None, str | None]:
    """The token of a `bearer.<token>` subprotocol, and that subprotocol to accept."""
    for offered in websocket.scope.get("subprotocols", []):
        if offered.startswith(protocol.SUBPROTOCOL_PREFIX):
            return offered.removeprefix(protocol.SUBPROTOCOL_PREFIX), offered
    return None, None


async def _first_frame_token(websocket: WebSocket) -> str:
    text = await asyncio.wait_for(websocket.receive_text(), protocol.AUTH_DEADLINE_SECONDS)
    frame = ClientFrame.model_validate_json(text)
    if frame.type != "auth" or not frame.token:
        raise ValueError("the first frame must be auth")
    return frame.token


async def _authenticate(websocket: WebSocket, token: str) -> AccessClaims:
    state = websocket.app.state
    claims = decode_access_token(
        token, keyring=state.keyring, now=state.clock.now(),
        leeway=state.settings.token_leeway_seconds,
    )  # fmt: skip
    if await state.denylist.contains(claims.token_id):
        raise Unauthorized("This access token was revoked (logged out).")
    async with state.database.unit_of_work() as session:
        role = await role_in(session, state.cache, claims.user_id, claims.organization_id)
    if role is None:
        raise Unauthorized("You are no longer a member of this organisation.")
    return claims


async def _revalidate(connection: Connection) -> None:
    """Close the connection when its token expires or is revoked (the hub hears revocations
    at once; this also catches one whose broadcast was missed)."""
    state = connection.websocket.app.state
    while True:
        left = (connection.claims.expires_at - state.clock.now()).total_seconds()
        await asyncio.sleep(max(0.0, min(left, REVALIDATE_SECONDS)))
        if state.clock.now() >= connection.claims.expires_at:
            connection.close(protocol.POLICY, "token expired")
            return
        if await state.denylist.contains(connection.claims.token_id):
            connection.close(protocol.POLICY, "token revoked")
            return


class _Inbox:
    """The frames a connection has sent and the gateway has not handled yet, at most
    `limit` characters of them: past that, reading stops until the handling catches up."""

    def __init__(self, limit: int) -> None:
        self.frames: asyncio.Queue[str | None] = asyncio.Queue()  # None: the peer left
        self.limit = limit
        self.size = 0
        self.has_room = asyncio.Event()
        self.has_room.set()

    def put(self, text: str | None) -> None:
        self.size += len(text or "")
        if self.size >= self.limit:
            self.has_room.clear()
        self.frames.put_nowait(text)

    async def get(self) -> str | None:
        text = await self.frames.get()
        self.size -= len(text or "")
        if self.size < self.limit:
            self.has_room.set()
        return text


async def _receive_all(connection: Connection) -> None:
    """Read the connection's frames as they arrive and handle them one at a time, in order.
    Reading runs ahead of the handling (up to INBOX_BYTES): the server sees the client's
    heartbeat pong at once, not after the burst of messages sent before it is stored, which
    on a busy server can take longer than the heartbeat's timeout. Frames read before the
    peer left are still handled; a handling that fails ends the connection, as it did when
    reading waited for it."""
    inbox = _Inbox(INBOX_BYTES)
    handling = asyncio.create_task(_handle_all(connection, inbox))
    reading = asyncio.create_task(_read_all(connection, inbox))
    try:
        await asyncio.wait({handling, reading}, return_when=asyncio.FIRST_COMPLETED)
        if handling.done():  # the connection was closed, or a handler failed unexpectedly
            handling.result()
            return
        await reading  # the peer left (or reading failed: raised here)
        await handling  # what it sent before leaving
    finally:
        reading.cancel()
        handling.cancel()


async def _read_all(connection: Connection, inbox: _Inbox) -> None:
    while True:
        await inbox.has_room.wait()
        try:
            inbox.put(await connection.websocket.receive_text())
        except WebSocketDisconnect:
            inbox.put(None)
            return


async def _handle_all(connection: Connection, inbox: _Inbox) -> None:
    while (text := await inbox.get()) is not None and not connection.closed.is_set():
        await _handle_text(connection, text)


async def _handle_text(connection: Connection, text: str) -> None:
    if len(text) > protocol.MAX_FRAME_BYTES:
        limit = f"frames are limited to {protocol.MAX_FRAME_BYTES:,} bytes"
        connection.reply(_error(connection, "frame", limit, None))
        return
    try:
        frame = ClientFrame.model_validate_json(text)
    except ValidationError as exc:
        connection.reply(_error(connection, _field(exc), _reason(exc), None))
        return
    if frame.type not in UNCOUNTED and not await within_rate(connection, frame):
        return
    handler = HANDLERS.get(frame.type)
    if handler is None:
        connection.reply(_error(connection, "type", f"{frame.type} is not supported yet", frame.id))
        return
    try:
        await _handle_traced(connection, frame, handler)
    except ValidationError as exc:
        reason = _reason(exc)
        connection.reply(_error(connection, _field(exc, "payload."), reason, frame.id))
    except ApexError as exc:
        field_name = str(exc.extra.get("field", "payload"))
        connection.reply(_error(connection, field_name, exc.detail, frame.id))
    except Exception:  # a bug, or a dependency failing in a way nobody mapped
        log.exception("websocket_frame_failed", type=frame.type)
        reason = "An unexpected error occurred; it has been logged. Reconnect and resume."
        connection.reply(_error(connection, "type", reason, frame.id))
        connection.close(protocol.SERVER_ERROR, "server error")


async def _handle_traced(
    connection: Connection, frame: ClientFrame, handler: Callable[..., Awaitable[None]]
) -> None:
    """One client frame in a trace of its own (linked to the connection), logged like an
    HTTP request is (pings are not)."""
    organization = str(connection.organization_id)
    started = time.perf_counter()
    connection.websocket.app.state.metrics.websocket_messages.add(
        1, {"direction": "in", "type": frame.type}
    )
    with tracing.span(f"WS {frame.type}", kind=SpanKind.SERVER, new_trace=True,
                      attributes={"apex.organization_id": organization}):  # fmt: skip
        try:
            await handler(connection, frame)
        finally:
            if frame.type != "ping":
                log.info("websocket_message", type=frame.type, organization_id=organization,
                         duration_ms=round((time.perf_counter() - started) * 1000, 2))  # fmt: skip


def _error(
    connection: Connection, field_name: str, reason: str, reply_to: str | None
) -> dict[str, Any]:
    payload = {"field": field_name, "reason": reason}
    return envelope("error", payload, connection.clock.now(), reply_to=reply_to)


def _field(exc: ValidationError, prefix: str = "") -> str:
    loc = exc.errors()[0]["loc"]
    return prefix + ".".join(str(part) for part in loc) if loc else prefix.rstrip(".") or "frame"


def _reason(exc: ValidationError) -> str:
    return str(exc.errors()[0]["msg"])
