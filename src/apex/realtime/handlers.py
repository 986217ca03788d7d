"""What the gateway does with each client frame (BRIEF §4), and the plan's limit on them."""

from __future__ import annotations

import contextlib
import uuid
from typing import Any

from apex.agents import service as agents
from apex.agents.limits import RunSlots
from apex.agents.schemas import RunIn
from apex.billing.feed import REVENUE_CHANNEL
from apex.billing.plans import plan_for
from apex.chat import service as chat
from apex.chat.models import Message, MessageRole, Thread
from apex.identity.policy import allows
from apex.identity.service import is_operator, organization_view, role_in
from apex.kit.channels import envelope, thread_channel, user_channel
from apex.kit.errors import UPGRADE_CHECKOUT, Forbidden, NotFound
from apex.realtime import protocol
from apex.realtime.connection import Connection
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

RATE_WINDOW_SECONDS = 60
ABUSE_FACTOR = 2  # refused frames beyond this many windows' worth in one window: 4429


async def within_rate(connection: Connection, frame: ClientFrame) -> bool:
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
        payload["upgrade"] = {"tier": upgrade.value, "url": UPGRADE_CHECKOUT}
    connection.reply(envelope("rate_limited", payload, state.clock.now(), reply_to=frame.id))
    if connection.refused > ABUSE_FACTOR * limit:
        connection.close(protocol.RATE_LIMITED, "rate limit: too many messages")
    return False


async def _ping(connection: Connection, frame: ClientFrame) -> None:
    now = connection.websocket.app.state.clock.now()
    connection.reply(envelope("pong", {}, now, reply_to=frame.id))


async def _resume(connection: Connection, frame: ClientFrame) -> None:
    wanted = ResumeIn.model_validate(frame.payload)
    for channel, position in wanted.channels.items():
        await _may_follow(connection, channel)
        await connection.follow(channel, seq=position.seq, epoch=position.epoch)


async def _may_follow(connection: Connection, channel: str) -> None:
    """Only the person's own channel, their organisation's threads, and for the operators of
    the installation the revenue feed."""
    if channel == user_channel(connection.user_id):
        return
    if channel == REVENUE_CHANNEL:
        state = connection.websocket.app.state
        async with state.database.unit_of_work() as session:
            if await is_operator(session, connection.user_id, state.settings.operator_emails):
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
    await _publish_thread(connection, thread.id, "thread_renamed", {"thread": _thread_out(thread)})


async def _delete_thread(connection: Connection, frame: ClientFrame) -> None:
    wanted = ThreadIn.model_validate(frame.payload)
    await _require(connection, "threads:write")
    state = connection.websocket.app.state
    async with state.database.unit_of_work() as session:
        thread = await chat.thread_of(session, connection.organization_id, wanted.thread_id)
        await chat.delete_thread(session, thread)
    await _publish_thread(connection, thread.id, "thread_deleted", {"thread_id": str(thread.id)})


async def _user_message(connection: Connection, frame: ClientFrame) -> None:
    """Store the message and tell everyone following the thread (on any instance); then,
    unless the client said `start_agent: false`, start an agent run on it as the question.
    A run the plan refuses (too many at once, or today) is an `error`; the message stays."""
    wanted = UserMessageIn.model_validate(frame.payload)
    await _require(connection, "agents:run" if wanted.start_agent else "threads:write")
    message = await _store_message(connection, wanted)
    await _publish_thread(
        connection, message.thread_id, "thread_message", {"message": _message_out(message),
                                                          "client_id": frame.id},
    )  # fmt: skip
    if wanted.start_agent:
        await _start_run(connection, frame, message.thread_id, wanted.content)


async def _store_message(connection: Connection, wanted: UserMessageIn) -> Message:
    state = connection.websocket.app.state
    async with state.database.unit_of_work() as session:
        return await chat.post_message(
            session, organization_id=connection.organization_id, thread_id=wanted.thread_id,
            author_id=connection.user_id, role=MessageRole.USER, content=wanted.content,
            now=state.clock.now(),
        )  # fmt: skip


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
    connection: Connection, thread_id: uuid.UUID, kind: str, payload: dict[str, Any]
) -> None:
    state = connection.websocket.app.state
    frame = envelope(kind, payload, state.clock.now(), thread_id=str(thread_id))
    await state.channels.publish(thread_channel(thread_id), frame)


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
