"""One WebSocket connection: what it follows, and the one task that writes to its socket.

The writer takes from one bounded queue: live events from the hub, replies, and "catch up
on this channel" orders. A live event that finds the writer idle, nothing queued and its
channel exactly one `seq` behind is written at once, in the hub's loop over followers, as
`websockets.broadcast` does: no queue hand-off, no task switch per delivery. A write that
would wait (the socket's buffer is full) is handed to the writer, ahead of anything after it.

A channel being caught up buffers its live events until its history has been sent, then
drops what the history already had, so history and live events merge without gap or
duplicate. A consumer too slow to drain its queue is closed (1013) instead of growing memory
without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from fastapi import WebSocket

from apex.identity.tokens import AccessClaims
from apex.kit.channels import Channels, Event, envelope
from apex.kit.clock import Clock
from apex.realtime import protocol
from apex.realtime.hub import Hub

SEND_QUEUE = 1_000  # frames waiting for one connection before it counts as too slow


@dataclass
class Cursor:
    """Where a connection is in one channel: the last `seq` it was sent, and while its
    history is being caught up, the live events that arrived meanwhile."""

    seq: int
    pending: list[Event] | None = field(default_factory=list)
    epoch: str | None = None  # of the channel's events sent so far


@dataclass(frozen=True)
class Unfinished:
    """A send begun at once that had to wait (`waiting`: what it waits on): the writer
    finishes it before anything queued after it."""

    sending: Coroutine[Any, Any, None]
    waiting: object
    cursor: Cursor
    event: Event


@dataclass(frozen=True)
class CatchUp:
    """Send `channel`'s events after `seq` (then its live ones); `announce`: answer `resumed`."""

    channel: str
    seq: int
    epoch: str | None
    announce: bool


Item = dict[str, Any] | Event | CatchUp | Unfinished


class Connection:
    def __init__(
        self, websocket: WebSocket, hub: Hub, channels: Channels, claims: AccessClaims
    ) -> None:
        self.websocket = websocket
        self.hub = hub
        self.channels = channels
        self.claims = claims
        self.clock: Clock = websocket.app.state.clock
        self.sent = websocket.app.state.metrics.websocket_messages  # frames out, counted
        self.token_id: str | None = claims.token_id
        self.queue: asyncio.Queue[Item] = asyncio.Queue(SEND_QUEUE)
        self.writing = False  # the writer is delivering an item
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
        cursor = self.cursors.get(event.channel)
        if cursor is None:
            return
        if self._next_in_line(cursor, event):
            self._send_at_once(cursor, event)
        else:
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

    def _enqueue(self, item: Item) -> None:
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

    # --- a live event written at once --------------------------------------------------

    def _next_in_line(self, cursor: Cursor, event: Event) -> bool:
        """Nothing is ahead of `event`: the writer is idle with nothing queued, the channel
        is not being caught up, and the event is the next `seq` of the epoch being sent."""
        return (
            not self.writing
            and self.queue.empty()
            and cursor.pending is None
            and event.seq == cursor.seq + 1
            and event.epoch == cursor.epoch
            and not self.closed.is_set()
        )

    def _send_at_once(self, cursor: Cursor, event: Event) -> None:
        """Run the send up to its first wait; almost always it has none (the frame went to
        the socket's buffer). If it waits, the writer finishes it; if it fails, the event
        goes to the writer, whose send fails the same way and ends the connection as any
        failed send does."""
        sending = self.websocket.send_text(event.frame)
        try:
            waiting = sending.send(None)
        except StopIteration:
            cursor.seq = event.seq
            return
        except Exception:
            self._enqueue(event)
            return
        self._enqueue(Unfinished(sending, waiting, cursor, event))

    async def _finish(self, unfinished: Unfinished) -> None:
        """Drive a send begun at once to its end, as a task would have."""
        sending, waiting = unfinished.sending, unfinished.waiting
        try:
            while True:
                if asyncio.isfuture(waiting):  # what a Task accepts, duck-typed as asyncio does
                    await asyncio.wait([waiting])  # its outcome is read by the send itself
                else:  # a bare yield (`asyncio.sleep(0)`)
                    await asyncio.sleep(0)
                try:
                    waiting = sending.send(None)
                except StopIteration:
                    break
        finally:
            sending.close()  # a no-op once finished; stops it if the writer is cancelled
        unfinished.cursor.seq = unfinished.event.seq

    # --- the writer ------------------------------------------------------------------------

    async def send_all(self) -> None:
        while True:
            item = await self.queue.get()
            self.writing = True
            try:
                await self._deliver(item)
            finally:
                self.writing = False
                self.queue.task_done()

    async def _deliver(self, item: Item) -> None:
        if isinstance(item, dict):
            await self._send(item)
        elif isinstance(item, Unfinished):
            await self._finish(item)
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
            await self._send(envelope("resumed", payload, self.clock.now()))
        cursor.epoch = current
        if history is None:  # the client reloads over REST, then follows from here
            cursor.seq = await self.channels.last_seq(order.channel)
        else:
            for event in history:
                await self._send_event(cursor, event)
        pending, cursor.pending = cursor.pending or [], None
        for event in pending:
            await self._send_event(cursor, event)

    async def _send_event(self, cursor: Cursor, event: Event) -> None:
        if cursor.epoch is not None and event.epoch != cursor.epoch:
            await self._restarted(cursor, event)
        if event.seq <= cursor.seq:
            return  # sent already (from the history, or twice by Pub/Sub)
        if event.seq > cursor.seq + 1:  # Pub/Sub lost some: fill the gap from the history
            missed = await self.channels.after(event.channel, cursor.seq, event.seq - cursor.seq)
            for earlier in missed or []:
                if cursor.seq < earlier.seq < event.seq:
                    await self._send_event(cursor, earlier)
        await self.websocket.send_text(event.frame)
        cursor.seq, cursor.epoch = event.seq, event.epoch

    async def _restarted(self, cursor: Cursor, event: Event) -> None:
        """The channel started again under a new epoch while followed (Redis lost its data):
        what came before cannot be replayed. Tell the client (`resumed`, not recovered: it
        reloads over REST) and follow the new epoch from its first event."""
        payload = {"channel": event.channel, "recovered": False, "epoch": event.epoch}
        await self._send(envelope("resumed", payload, self.clock.now()))
        cursor.seq, cursor.epoch = 0, event.epoch  # the new epoch from its start

    async def _send(self, frame: dict[str, Any]) -> None:
        await self.websocket.send_text(json.dumps(frame, default=str))
        self.sent.add(1, {"direction": "out"})
