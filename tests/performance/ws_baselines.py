"""The baselines of the WebSocket fan-out benchmark, each a server of its own:

- `bare PORT [deflate|none]`: a `websockets` server that broadcasts every `pub <text>` frame
  to all other connections (`websockets.broadcast`): the floor of Python WebSocket fan-out,
  one process; with permessage-deflate (its default) or without (as Apex by default).
- `socketio PORT REDIS_URL`: python-socketio's ASGI server under uvicorn with its Redis
  manager, so several processes fan out together, as Apex's instances do.

Run as `python -m tests.performance.ws_baselines bare|socketio ...`; `/health` answers 200.
"""

from __future__ import annotations

import asyncio
import resource
import sys
from http import HTTPStatus
from typing import Any


def _more_files() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def bare(port: int, compression: str | None) -> None:
    from websockets.asyncio.server import ServerConnection, broadcast, serve
    from websockets.http11 import Request, Response

    connected: set[ServerConnection] = set()

    def health(connection: ServerConnection, request: Request) -> Response | None:
        if request.path == "/health":
            return connection.respond(HTTPStatus.OK, "ok\n")
        return None

    async def handler(connection: ServerConnection) -> None:
        connected.add(connection)
        try:
            async for message in connection:
                if isinstance(message, str) and message.startswith("pub "):
                    broadcast(connected - {connection}, message[4:])
        finally:
            connected.discard(connection)

    async with serve(handler, "127.0.0.1", port, process_request=health, max_queue=None,
                     compression=compression):  # fmt: skip
        await asyncio.Future()


def socketio_app(redis_url: str) -> Any:
    import socketio  # type: ignore[import-untyped]

    sio = socketio.AsyncServer(
        async_mode="asgi", client_manager=socketio.AsyncRedisManager(redis_url)
    )

    @sio.on("publish")  # type: ignore[untyped-decorator]
    async def publish(sid: str, data: Any) -> None:
        await sio.emit("message", data, skip_sid=sid)

    async def health(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok\n"})

    return socketio.ASGIApp(sio, other_asgi_app=health)


if __name__ == "__main__":
    _more_files()
    kind, port = sys.argv[1], int(sys.argv[2])
    if kind == "bare":
        asyncio.run(bare(port, None if sys.argv[3:] == ["none"] else "deflate"))
    else:
        import uvicorn

        uvicorn.run(socketio_app(sys.argv[3]), host="127.0.0.1", port=port, log_level="warning")
