"""`/ws`: authenticate, follow the user's and the open thread's channels, answer the
client's frames, and send every event of a followed channel exactly once and in `seq`
order, including those missed while disconnected (`resume`).

One task per connection writes to the socket, from one bounded queue: live events from the
hub, replies, and "catch up on this channel" orders. A channel being caught up buffers its
live events until its history has been sent, then drops what the history already had, so
history and live events merge without gap or duplicate. A consumer too slow to drain its
queue is closed (1013) instead of growing memory without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from types import FrameType
from typing import Any

import structlog
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import ValidationError

from apex.agents import service as agents
from apex.agents.limits import RunSlots
from apex.agents.schemas import RunIn
from apex.billing.plans import plan_for
from apex.chat import service as chat
from apex.chat.models import Message, Thread
from apex.identity.policy import allows
from apex.identity.service import organization_view, role_in
from apex.identity.tokens import AccessClaims, decode_access_token
from apex.kit.channels import Channels, Event, envelope, thread_channel, user_channel
from apex.kit.errors import ApexError, Forbidden, NotFound, Unauthorized
from apex.realtime import protocol
from apex.realtime.hub import Hub
from apex.realtime.protocol import (
    ClientFrame,
    CreateThreadIn,
    HistoryIn,
    RenameThreadIn,
    ResumeIn,
    StartAgentIn,
    StopAgentIn,
    ThreadIn,
    UserMessageIn,
)

log = structlog.get_logger(__name__)
router = APIRouter()

SEND_QUEUE = 1_000  # frames waiting for one connection before it counts as too slow
REVALIDATE_SECONDS = 60.0  # the token is checked again (expiry, denylist) at least this often
RATE_WINDOW_SECONDS = 60
ABUSE_FACTOR = 2  # refused frames beyond this many windows' worth in one window: 4429
UNCOUNTED = frozenset({"auth", "ping", "resume"})
INSTANCE = f"{socket.gethostname()}:{os.getpid()}"  # which `apex serve` holds a connection


@dataclass
class Cursor:
    """Where a connection is in one channel: the last `seq` it was sent, and while its
    history is being caught up, the live events that arrived meanwhile."""

    seq: int
    pending: list[Event] | None = field(default_factory=list)


@dataclass(frozen=True)
class CatchUp:
    """Send `channel`'s events after `seq` (then its live ones); `announce`: answer `resumed`."""

    channel: str
    seq: int
    epoch: str | None
    announce: bool


class Connection:
    def __init__(
        self, websocket: WebSocket, hub: Hub, channels: Channels, claims: AccessClaims
    ) -> None:
        self.websocket = websocket
        self.hub = hub
        self.channels = channels
        self.claims = claims
        self.token_id: str | None = claims.token_id
        self.queue: asyncio.Queue[dict[str, Any] | Event | CatchUp] = asyncio.Queue(SEND_QUEUE)
        self.cursors: dict[str, Cursor] = {}
        self.thread: str | None = None  # the channel of the open thread
        self.closed = asyncio.Event()
        self.close_code = 1000
        self.close_reason = ""
        self.refused = 0
        self.refused_window = 0
        self.finished = asyncio.Event()  # set once the socket is closed and cleaned up

    @property
    def user_id(self) -> uuid.UUID:
        return self.claims.user_id

    @property
    def organization_id(self) -> uuid.UUID:
        return self.claims.organization_id

    # --- what others call ------------------------------------------------------------------

    def offer(self, event: Event) -> None:
        if event.channel in self.cursors:
            self._enqueue(event)

    def reply(self, frame: dict[str, Any]) -> None:
        self._enqueue(frame)

    async def revoke(self) -> None:
        self.close(protocol.POLICY, "token revoked")

    def close(self, code: int, reason: str) -> None:
        if not self.closed.is_set():
            self.close_code, self.close_reason = code, reason
            self.closed.set()

    async def drain(self, deadline: float) -> None:
        """Finish sending what is queued (until `deadline`, loop time), then close with 1013:
        the client reconnects to another instance and resumes."""
        loop = asyncio.get_running_loop()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.queue.join(), max(0.0, deadline - loop.time()))
        self.close(protocol.TRY_AGAIN_LATER, "server restarting: reconnect and resume")
        await asyncio.wait_for(self.finished.wait(), max(0.1, deadline - loop.time()))

    def _enqueue(self, item: dict[str, Any] | Event | CatchUp) -> None:
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.close(protocol.TRY_AGAIN_LATER, "too slow: the send queue is full")

    async def follow(
        self, channel: str, *, seq: int | None = None, epoch: str | None = None
    ) -> None:
        """Follow a channel from `seq` (`resume`), or from now."""
        announce = seq is not None
        if seq is None:
            seq = await self.channels.last_seq(channel)
            epoch = await self.channels.epoch(channel)
        self.cursors[channel] = Cursor(seq)
        await self.hub.subscribe(channel, self)
        self._enqueue(CatchUp(channel, seq, epoch, announce))

    async def unfollow(self, channel: str) -> None:
        self.cursors.pop(channel, None)
        await self.hub.unsubscribe(channel, self)

    # --- the writer ------------------------------------------------------------------------

    async def send_all(self) -> None:
        while True:
            item = await self.queue.get()
            try:
                await self._deliver(item)
            finally:
                self.queue.task_done()

    async def _deliver(self, item: dict[str, Any] | Event | CatchUp) -> None:
        if isinstance(item, dict):
            await self._send(item)
        elif isinstance(item, CatchUp):
            await self._catch_up(item)
        elif (cursor := self.cursors.get(item.channel)) is not None:
            if cursor.pending is not None:
                cursor.pending.append(item)
            else:
                await self._send_event(cursor, item)

    async def _catch_up(self, order: CatchUp) -> None:
        cursor = self.cursors.get(order.channel)
        if cursor is None:
            return
        current = await self.channels.epoch(order.channel)
        same_epoch = order.epoch is None or current is None or order.epoch == current
        history = await self.channels.after(order.channel, order.seq) if same_epoch else None
        if order.announce:
            payload = {"channel": order.channel, "recovered": history is not None,
                       "epoch": current}  # fmt: skip
            await self._send(envelope("resumed", payload, datetime.now().astimezone()))
        if history is None:  # the client reloads over REST, then follows from here
            cursor.seq = await self.channels.last_seq(order.channel)
        else:
            for event in history:
                await self._send_event(cursor, event)
        pending, cursor.pending = cursor.pending or [], None
        for event in pending:
            await self._send_event(cursor, event)

    async def _send_event(self, cursor: Cursor, event: Event) -> None:
        if event.seq <= cursor.seq:
            return  # sent already (from the history, or twice by Pub/Sub)
        if event.seq > cursor.seq + 1:  # Pub/Sub lost some: fill the gap from the history
            missed = await self.channels.after(event.channel, cursor.seq, event.seq - cursor.seq)
            for earlier in missed or []:
                if cursor.seq < earlier.seq < event.seq:
                    await self._send_event(cursor, earlier)
        await self._send({**event.data, "seq": event.seq, "channel": event.channel,
                          "epoch": event.epoch})  # fmt: skip
        cursor.seq = event.seq

    async def _send(self, frame: dict[str, Any]) -> None:
        await self.websocket.send_text(json.dumps(frame, default=str))


# --- the endpoint ------------------------------------------------------------------------


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


def install_drain(hub: Hub, seconds: float) -> Callable[[], None]:
    """On SIGTERM, drain the WebSocket connections before the server's own shutdown, which
    would close them with 1012 at once; return what restores the previous handler. Only
    under a server that handles SIGTERM itself (uvicorn), in the main thread."""
    previous = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is not threading.main_thread() or not callable(previous):
        return lambda: None
    loop = asyncio.get_running_loop()
    forward: Callable[[int, FrameType | None], Any] = previous

    async def drain_then_stop(signum: int, frame: FrameType | None) -> None:
        try:
            await drain(hub, seconds)
        finally:
            forward(signum, frame)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        if hub.draining:  # a second SIGTERM: stop now
            forward(signum, frame)
            return
        loop.call_soon_threadsafe(lambda: loop.create_task(drain_then_stop(signum, frame)))

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


async def _receive_all(connection: Connection) -> None:
    websocket = connection.websocket
    while not connection.closed.is_set():
        try:
            text = await websocket.receive_text()
        except WebSocketDisconnect:
            return
        if len(text) > protocol.MAX_FRAME_BYTES:
            connection.reply(_error("frame", f"frames are limited to "
                                    f"{protocol.MAX_FRAME_BYTES:,} bytes", None))  # fmt: skip
            continue
        try:
            frame = ClientFrame.model_validate_json(text)
        except ValidationError as exc:
            connection.reply(_error(_field(exc), _reason(exc), None))
            continue
        if frame.type not in UNCOUNTED and not await _within_rate(connection, frame):
            continue
        handler = HANDLERS.get(frame.type)
        if handler is None:
            connection.reply(_error("type", f"{frame.type} is not supported yet", frame.id))
            continue
        try:
            await handler(connection, frame)
        except ValidationError as exc:
            connection.reply(_error(_field(exc, "payload."), _reason(exc), frame.id))
        except ApexError as exc:
            connection.reply(_error(str(exc.extra.get("field", "payload")), exc.detail, frame.id))


def _error(field_name: str, reason: str, reply_to: str | None) -> dict[str, Any]:
    payload = {"field": field_name, "reason": reason}
    return envelope("error", payload, datetime.now().astimezone(), reply_to=reply_to)


def _field(exc: ValidationError, prefix: str = "") -> str:
    loc = exc.errors()[0]["loc"]
    return prefix + ".".join(str(part) for part in loc) if loc else prefix.rstrip(".") or "frame"


def _reason(exc: ValidationError) -> str:
    return str(exc.errors()[0]["msg"])


async def _within_rate(connection: Connection, frame: ClientFrame) -> bool:
    """Count the frame against the plan's messages a minute (per person, across every
    instance); refuse it with `rate_limited` past the limit; close (4429) a client that
    keeps sending far past it."""
    state = connection.websocket.app.state
    if not state.settings.enforce_api_limits:
        return True
    async with state.database.unit_of_work() as session:
        organization = await organization_view(session, state.cache, connection.organization_id)
    plan = plan_for(organization["tier"] if organization else "free")
    limit = plan.websocket_messages_per_minute
    now = state.clock.now().timestamp()
    window = int(now // RATE_WINDOW_SECONDS)
    if window != connection.refused_window:  # abuse is counted per window
        connection.refused_window, connection.refused = window, 0
    subject = f"{connection.organization_id}:{connection.user_id}"
    decision = await state.api_limiter.hit(
        "ws", subject, limit=limit, window_seconds=RATE_WINDOW_SECONDS, now=now
    )
    if decision.allowed:
        return True
    connection.refused += 1
    upgrade = plan.next_tier
    payload: dict[str, Any] = {
        "retry_after": decision.reset_seconds,
        "limit": limit,
        "window_seconds": RATE_WINDOW_SECONDS,
        "reason": f"Your plan allows {limit:,} messages a minute.",
    }
    if upgrade is not None:
        payload["upgrade"] = {"tier": upgrade.value, "url": "/api/v1/billing/checkout"}
    connection.reply(envelope("rate_limited", payload, state.clock.now(), reply_to=frame.id))
    if connection.refused > ABUSE_FACTOR * limit:
        connection.close(protocol.RATE_LIMITED, "rate limit: too many messages")
    return False


# --- handlers --------------------------------------------------------------------------------


async def _ping(connection: Connection, frame: ClientFrame) -> None:
    now = connection.websocket.app.state.clock.now()
    connection.reply(envelope("pong", {}, now, reply_to=frame.id))


async def _resume(connection: Connection, frame: ClientFrame) -> None:
    wanted = ResumeIn.model_validate(frame.payload)
    for channel, position in wanted.channels.items():
        await _may_follow(connection, channel)
        await connection.follow(channel, seq=position.seq, epoch=position.epoch)


async def _may_follow(connection: Connection, channel: str) -> None:
    """Only the person's own channel and their organisation's threads."""
    if channel == user_channel(connection.user_id):
        return
    kind, _, ident = channel.partition(":")
    if kind == "thread":
        with contextlib.suppress(ValueError):
            await _thread(connection, uuid.UUID(ident))
            return
    raise NotFound(f"No channel {channel[:80]!r} you may follow.", field="channels")


async def _thread(connection: Connection, thread_id: uuid.UUID) -> Thread:
    state = connection.websocket.app.state
    async with state.database.unit_of_work() as session:
        return await chat.thread_of(session, connection.organization_id, thread_id)


def _thread_out(thread: Thread) -> dict[str, Any]:
    return {"id": str(thread.id), "title": thread.title,
            "updated_at": thread.updated_at.isoformat()}  # fmt: skip


def _message_out(message: Message) -> dict[str, Any]:
    return {
        "id": str(message.id), "thread_id": str(message.thread_id), "seq": message.seq,
        "role": message.role, "content": message.content,
        "author_id": str(message.author_id) if message.author_id else None,
        "created_at": message.created_at.isoformat(),
    }  # fmt: skip


async def _switch_thread(connection: Connection, frame: ClientFrame) -> None:
    wanted = ThreadIn.model_validate(frame.payload)
    thread = await _thread(connection, wanted.thread_id)
    channel = thread_channel(thread.id)
    if connection.thread is not None and connection.thread != channel:
        await connection.unfollow(connection.thread)
    connection.thread = channel
    await connection.follow(channel)
    now = connection.websocket.app.state.clock.now()
    payload = {"thread": _thread_out(thread), "channel": channel,
               "seq": connection.cursors[channel].seq}  # fmt: skip
    connection.reply(envelope("thread_switched", payload, now, reply_to=frame.id))


async def _create_thread(connection: Connection, frame: ClientFrame) -> None:
    wanted = CreateThreadIn.model_validate(frame.payload)
    await _require(connection, "threads:write")
    state = connection.websocket.app.state
    async with state.database.unit_of_work() as session:
        thread = await chat.create_thread(
            session, organization_id=connection.organization_id,
            created_by_id=connection.user_id, title=wanted.title,
        )  # fmt: skip
    await state.channels.publish(
        user_channel(connection.user_id),
        envelope("thread_created", {"thread": _thread_out(thread)}, state.clock.now(),
                 thread_id=str(thread.id)),
    )  # fmt: skip


async def _list_threads(connection: Connection, frame: ClientFrame) -> None:
    state = connection.websocket.app.state
    async with state.database.unit_of_work() as session:
        threads = await chat.latest_threads(session, connection.organization_id)
    payload = {"threads": [_thread_out(thread) for thread in threads]}
    connection.reply(envelope("thread_list", payload, state.clock.now(), reply_to=frame.id))


async def _thread_history(connection: Connection, frame: ClientFrame) -> None:
    wanted = HistoryIn.model_validate(frame.payload)
    state = connection.websocket.app.state
    async with state.database.unit_of_work() as session:
        thread = await chat.thread_of(session, connection.organization_id, wanted.thread_id)
        messages = await chat.history(session, thread, wanted.before_seq, wanted.limit)
    payload = {"thread_id": str(thread.id), "messages": [_message_out(m) for m in messages]}
    connection.reply(envelope("thread_history", payload, state.clock.now(), reply_to=frame.id))


async def _rename_thread(connection: Connection, frame: ClientFrame) -> None:
    wanted = RenameThreadIn.model_validate(frame.payload)
    await _require(connection, "threads:write")
    state = connection.websocket.app.state
    async with state.database.unit_of_work() as session:
        thread = await chat.thread_of(session, connection.organization_id, wanted.thread_id)
        thread.title = wanted.title
    await _publish_thread(connection, thread, "thread_renamed", {"thread": _thread_out(thread)})


async def _delete_thread(connection: Connection, frame: ClientFrame) -> None:
    wanted = ThreadIn.model_validate(frame.payload)
    await _require(connection, "threads:write")
    state = connection.websocket.app.state
    async with state.database.unit_of_work() as session:
        thread = await chat.thread_of(session, connection.organization_id, wanted.thread_id)
        await chat.delete_thread(session, thread)
    await _publish_thread(connection, thread, "thread_deleted", {"thread_id": str(thread.id)})


async def _user_message(connection: Connection, frame: ClientFrame) -> None:
    """Store the message and tell everyone following the thread (on any instance); then,
    unless the client said `start_agent: false`, start an agent run on it as the question.
    A run the plan refuses (too many at once, or today) is an `error`; the message stays."""
    wanted = UserMessageIn.model_validate(frame.payload)
    await _require(connection, "agents:run" if wanted.start_agent else "threads:write")
    thread, message = await _store_message(connection, wanted)
    await _publish_thread(
        connection, thread, "thread_message", {"message": _message_out(message),
                                               "client_id": frame.id},
    )  # fmt: skip
    if wanted.start_agent:
        await _start_run(connection, frame, thread.id, wanted.content)


async def _store_message(connection: Connection, wanted: UserMessageIn) -> tuple[Thread, Message]:
    state = connection.websocket.app.state
    async with state.database.unit_of_work() as session:
        thread = await chat.thread_of(session, connection.organization_id, wanted.thread_id)
        message = await chat.add_user_message(session, thread, connection.user_id, wanted.content)
    return thread, message


async def _start_agent(connection: Connection, frame: ClientFrame) -> None:
    wanted = StartAgentIn.model_validate(frame.payload)
    await _require(connection, "agents:run")
    await _thread(connection, wanted.thread_id)
    await _start_run(connection, frame, wanted.thread_id, wanted.question)


async def _start_run(
    connection: Connection, frame: ClientFrame, thread_id: uuid.UUID, question: str
) -> None:
    """Queue a run in the thread; its events reach the thread's followers as the worker
    emits them (`apex.agents.events`)."""
    state = connection.websocket.app.state
    body = RunIn(question=question[:4000], thread_id=thread_id)
    async with state.database.unit_of_work() as session:
        run = await agents.start_run(
            session, organization_id=connection.organization_id,
            user_id=connection.user_id, body=body, settings=state.settings,
            slots=RunSlots(state.redis), now=state.clock.now(),
        )  # fmt: skip
    payload = {"run_id": str(run.id), "thread_id": str(thread_id), "status": run.status}
    connection.reply(envelope("agent_queued", payload, state.clock.now(), reply_to=frame.id,
                              run_id=str(run.id), thread_id=str(thread_id)))  # fmt: skip


async def _stop_agent(connection: Connection, frame: ClientFrame) -> None:
    wanted = StopAgentIn.model_validate(frame.payload)
    await _require(connection, "agents:run")
    state = connection.websocket.app.state
    async with state.database.unit_of_work() as session:
        run = await agents.cancel_run(
            session, organization_id=connection.organization_id, run_id=wanted.run_id,
            slots=RunSlots(state.redis), redis=state.redis, now=state.clock.now(),
        )  # fmt: skip
    payload = {"run_id": str(run.id), "status": run.status}
    connection.reply(envelope("agent_stopping", payload, state.clock.now(), reply_to=frame.id,
                              run_id=str(run.id)))  # fmt: skip


async def _require(connection: Connection, permission: str) -> None:
    """The person's role now (a change applies to the next frame), allowing `permission`."""
    state = connection.websocket.app.state
    async with state.database.unit_of_work() as session:
        role = await role_in(session, state.cache, connection.user_id, connection.organization_id)
    if role is None or not allows(role, permission):
        raise Forbidden(f"Your role does not allow {permission}.", field="type")


async def _publish_thread(
    connection: Connection, thread: Thread, kind: str, payload: dict[str, Any]
) -> None:
    state = connection.websocket.app.state
    frame = envelope(kind, payload, state.clock.now(), thread_id=str(thread.id))
    await state.channels.publish(thread_channel(thread.id), frame)


HANDLERS = {
    "ping": _ping,
    "resume": _resume,
    "switch_thread": _switch_thread,
    "create_thread": _create_thread,
    "list_threads": _list_threads,
    "get_thread_history": _thread_history,
    "rename_thread": _rename_thread,
    "delete_thread": _delete_thread,
    "user_message": _user_message,
    "start_agent": _start_agent,
    "stop_agent": _stop_agent,
}
