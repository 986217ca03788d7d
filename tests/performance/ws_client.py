"""A lean WebSocket client for the fan-out benchmark: RFC 6455 frames parsed straight off
the transport, each text message handed to a callback, with permessage-deflate (RFC 7692)
when offered. With `websockets`' client, the one measuring process spent about 23 µs a
message and was busy all of a burst from the bare server: that row measured the client.
Not a general client: no limits on what it buffers, no UTF-8 validation, and pings from
the server are answered but never sent.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
import zlib
from collections.abc import Callable
from urllib.parse import urlsplit

TEXT, CLOSE, PING, PONG = 0x1, 0x8, 0x9, 0xA
_DEFLATE_TAIL = b"\x00\x00\xff\xff"


class Handshake(Exception):
    """The server did not switch protocols."""


class LeanClient(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.upgraded: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.inflate: zlib._Decompress | None = None
        self.fresh_inflate = False  # server_no_context_takeover: each message on its own
        self.fragments: list[bytes] = []
        self.compressed = False
        # Messages go to `on_text` when set; until then they wait in `inbox` (`recv`).
        self.on_text: Callable[[str], None] | None = None
        self.inbox: asyncio.Queue[str] = asyncio.Queue()
        self.closed = asyncio.Event()

    # --- the socket -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()
        if not self.upgraded.done():
            self.upgraded.set_exception(Handshake("connection closed during the handshake"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.upgraded.done():
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head, self.buffer = bytes(self.buffer[:end]), self.buffer[end + 4 :]
            try:
                self._negotiated(head.decode("latin-1"))
            except Handshake as refused:
                self.upgraded.set_exception(refused)
                return
            self.upgraded.set_result(head)
        self._frames()

    def _negotiated(self, head: str) -> None:
        """Check the server's answer and take on the extension it agreed to, before the
        frames that may follow it in the same read."""
        status, *fields = head.split("\r\n")
        if " 101 " not in status + " ":
            raise Handshake(status)
        extensions = [value for name, _, value in (f.partition(":") for f in fields)
                      if name.strip().lower() == "sec-websocket-extensions"]  # fmt: skip
        if any("permessage-deflate" in value for value in extensions):
            self.inflate = zlib.decompressobj(-zlib.MAX_WBITS)
            self.fresh_inflate = any("server_no_context_takeover" in v for v in extensions)

    def _frames(self) -> None:
        buffer = self.buffer
        at = 0
        while len(buffer) - at >= 2:
            first, second = buffer[at], buffer[at + 1]
            length, header = second & 0x7F, 2
            if length == 126:
                if len(buffer) - at < 4:
                    break
                (length,) = struct.unpack_from("!H", buffer, at + 2)
                header = 4
            elif length == 127:
                if len(buffer) - at < 10:
                    break
                (length,) = struct.unpack_from("!Q", buffer, at + 2)
                header = 10
            if len(buffer) - at < header + length:
                break
            payload = bytes(buffer[at + header : at + header + length])
            at += header + length
            self._frame(first, payload)
        del buffer[:at]

    def _frame(self, first: int, payload: bytes) -> None:
        opcode = first & 0x0F
        if opcode == PING:
            self._send(PONG, payload)
        elif opcode == CLOSE:
            if self.transport is not None and not self.transport.is_closing():
                self._send(CLOSE, payload[:2])
                self.transport.close()
        elif opcode in (TEXT, 0x0):  # a text message or its continuation
            if opcode == TEXT:
                self.compressed = bool(first & 0x40)
            self.fragments.append(payload)
            if first & 0x80:  # FIN: the message is whole
                message = b"".join(self.fragments)
                self.fragments.clear()
                if self.compressed and self.inflate is not None:
                    if self.fresh_inflate:
                        self.inflate = zlib.decompressobj(-zlib.MAX_WBITS)
                    message = self.inflate.decompress(message + _DEFLATE_TAIL)
                self._deliver(message.decode())

    def _deliver(self, text: str) -> None:
        if self.on_text is not None:
            self.on_text(text)
        else:
            self.inbox.put_nowait(text)

    def _send(self, opcode: int, payload: bytes) -> None:
        """One masked frame (clients must mask; the key is random, as the RFC asks)."""
        assert self.transport is not None
        key = os.urandom(4)
        length = len(payload)
        if length < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
        elif length < 1 << 16:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
        mask = int.from_bytes((key * (length // 4 + 1))[:length], "big")
        masked = (int.from_bytes(payload, "big") ^ mask).to_bytes(length, "big")
        self.transport.write(header + key + masked)

    # --- what the benchmark calls -----------------------------------------------------------

    async def send(self, text: str) -> None:
        self._send(TEXT, text.encode())

    async def recv(self) -> str:
        return await self.inbox.get()

    async def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self._send(CLOSE, struct.pack("!H", 1000))
            self.transport.close()
        await self.closed.wait()


async def lean_connect(url: str, *, subprotocol: str | None = None,
                       deflate: bool = True) -> LeanClient:  # fmt: skip
    """Open `url` (ws://host:port/path?query), offering `subprotocol` and permessage-deflate
    as a browser does; returns once the server switched protocols."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(LeanClient, host, port)
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {target} HTTP/1.1",
        f"Host: {host}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if subprotocol is not None:
        lines.append(f"Sec-WebSocket-Protocol: {subprotocol}")
    if deflate:
        lines.append("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits")
    assert client.transport is not None
    client.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await client.upgraded
    return client
