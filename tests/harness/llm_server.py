"""A local OpenAI-compatible server for tests: `python -m tests.harness.llm_server --port N`.

It speaks POST /v1/chat/completions (JSON and server-sent-event streaming, with usage) and is
scripted over HTTP: POST /_script appends behaviours consumed one per request, in order;
when none is queued it answers normally. A behaviour is a JSON object:
  {"status": 500}                      an error response
  {"status": 429, "retry_after": 1.5}  rate limited, with Retry-After
  {"delay": 3}                         answer after 3 s (client timeouts)
  {"text": "...", "cached_tokens": 5}  a normal answer with this text
GET /_requests returns every request received (time, body, and the usage it was answered
with); POST /_reset clears the script and the log.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

SCRIPT: deque[dict[str, Any]] = deque()
REQUESTS: list[dict[str, Any]] = []


def _count(text: str) -> int:
    return len(text.split())


def _usage(body: dict[str, Any], text: str, cached: int) -> dict[str, Any]:
    prompt = sum(_count(str(m.get("content", ""))) for m in body.get("messages", []))
    completion = _count(text)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": min(cached, prompt)},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def _default_text(body: dict[str, Any]) -> str:
    system = str(body.get("messages", [{}])[0].get("content", ""))
    if "JSON" in system:
        return json.dumps({"intents": ["error_waste", "model_right_sizing"]})
    return "Your spend is concentrated in a few workloads; the numbers are below."


async def completions(request: Request) -> Response:
    body = await request.json()
    entry: dict[str, Any] = {"t": time.monotonic(), "body": body, "status": 200}
    REQUESTS.append(entry)
    behaviour = SCRIPT.popleft() if SCRIPT else {}
    if "delay" in behaviour:
        await asyncio.sleep(float(behaviour["delay"]))
    status = int(behaviour.get("status", 200))
    entry["status"] = status
    if status != 200:
        headers = {}
        if "retry_after" in behaviour:
            headers["Retry-After"] = str(behaviour["retry_after"])
        error = {"error": {"message": f"scripted {status}", "type": "server_error"}}
        return JSONResponse(error, status_code=status, headers=headers)
    text = str(behaviour.get("text") or _default_text(body))
    usage = _usage(body, text, int(behaviour.get("cached_tokens", 0)))
    entry["usage"] = usage
    model = body.get("model", "gpt-4o-mini")
    created = int(time.time())
    if not body.get("stream"):
        return JSONResponse(
            {
                "id": f"chatcmpl-{len(REQUESTS)}",
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
            }
        )

    async def events() -> AsyncIterator[str]:
        base = {"id": f"chatcmpl-{len(REQUESTS)}", "object": "chat.completion.chunk",
                "created": created, "model": model}  # fmt: skip
        words = text.split(" ")
        for index, word in enumerate(words):
            piece = word if index == len(words) - 1 else word + " "
            chunk = {**base, "choices": [{"index": 0, "delta": {"content": piece}}]}
            yield f"data: {json.dumps(chunk)}\n\n"
        final = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        yield f"data: {json.dumps(final)}\n\n"
        if (body.get("stream_options") or {}).get("include_usage"):
            yield f"data: {json.dumps({**base, 'choices': [], 'usage': usage})}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


async def script(request: Request) -> Response:
    behaviours = await request.json()
    SCRIPT.extend(behaviours if isinstance(behaviours, list) else [behaviours])
    return JSONResponse({"queued": len(SCRIPT)})


async def requests_log(_: Request) -> Response:
    return JSONResponse(REQUESTS)


async def reset(_: Request) -> Response:
    SCRIPT.clear()
    REQUESTS.clear()
    return JSONResponse({})


async def health(_: Request) -> Response:
    return JSONResponse({"ok": True})


app = Starlette(
    routes=[
        Route("/v1/chat/completions", completions, methods=["POST"]),
        Route("/_script", script, methods=["POST"]),
        Route("/_requests", requests_log),
        Route("/_reset", reset, methods=["POST"]),
        Route("/_health", health),
    ]
)

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    uvicorn.run(app, host="127.0.0.1", port=parser.parse_args().port, log_level="warning")
