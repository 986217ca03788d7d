"""A local LLM server for tests: `python -m tests.harness.llm_server --port N`.

It speaks OpenAI's POST /v1/chat/completions and Anthropic's POST /v1/messages (JSON and
server-sent-event streaming, with usage) and is scripted over HTTP: POST /_script appends
behaviours consumed one per request, in order; when none is queued it answers normally.
A behaviour is a JSON object:
  {"status": 500}                      an error response
  {"status": 429, "retry_after": 1.5}  rate limited, with Retry-After
  {"delay": 3}                         answer after 3 s (client timeouts)
  {"text": "...", "cached_tokens": 5}  a normal answer with this text
  {"cached_tokens": 5, "cache_write_tokens": 7}  usage with prompt-cache reads / writes
GET /_requests returns every request received (time, path, body, header names, and the
usage it was answered with); POST /_reset clears the script and the log.
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
    """OpenAI's Chat Completions API."""
    body, entry, behaviour = await _received(request)
    status = entry["status"]
    if status != 200:
        return _error(behaviour, status)
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


async def _received(request: Request) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(body, log entry, behaviour): log the request, take the next scripted behaviour."""
    body = await request.json()
    entry: dict[str, Any] = {
        "t": time.monotonic(),
        "path": request.url.path,
        "body": body,
        "headers": sorted(request.headers.keys()),
        "status": 200,
    }
    REQUESTS.append(entry)
    behaviour = SCRIPT.popleft() if SCRIPT else {}
    if "delay" in behaviour:
        await asyncio.sleep(float(behaviour["delay"]))
    entry["status"] = int(behaviour.get("status", 200))
    return body, entry, behaviour


def _error(behaviour: dict[str, Any], status: int) -> Response:
    headers = {}
    if "retry_after" in behaviour:
        headers["Retry-After"] = str(behaviour["retry_after"])
    error = {"type": "error", "error": {"message": f"scripted {status}", "type": "api_error"}}
    return JSONResponse(error, status_code=status, headers=headers)


def _sse(kind: str, data: dict[str, Any]) -> str:
    return f"event: {kind}\ndata: {json.dumps(data)}\n\n"


async def messages(request: Request) -> Response:
    """Anthropic's Messages API."""
    body, entry, behaviour = await _received(request)
    if entry["status"] != 200:
        return _error(behaviour, entry["status"])
    text = str(behaviour.get("text") or "Noted: the findings are summarised below.")
    prompt = _count(str(body.get("system", ""))) + sum(
        _count(str(m.get("content", ""))) for m in body.get("messages", [])
    )
    cached = min(int(behaviour.get("cached_tokens", 0)), prompt)
    written = min(int(behaviour.get("cache_write_tokens", 0)), prompt - cached)
    usage = {
        "input_tokens": prompt - cached - written,
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": written,
        "output_tokens": _count(text),
    }
    entry["usage"] = usage
    message = {
        "id": f"msg_{len(REQUESTS)}", "type": "message", "role": "assistant",
        "model": body.get("model"), "stop_reason": "end_turn", "stop_sequence": None,
    }  # fmt: skip
    if not body.get("stream"):
        return JSONResponse(
            {**message, "content": [{"type": "text", "text": text}], "usage": usage}
        )

    async def events() -> AsyncIterator[str]:
        started: dict[str, Any] = {**message, "content": [], "usage": {**usage, "output_tokens": 1}}
        yield _sse("message_start", {"type": "message_start", "message": started})
        block = {"type": "text", "text": ""}
        yield _sse(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": block},
        )
        words = text.split(" ")
        for index, word in enumerate(words):
            piece = word if index == len(words) - 1 else word + " "
            delta = {"type": "text_delta", "text": piece}
            yield _sse(
                "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}
            )
        yield _sse("content_block_stop", {"type": "content_block_stop", "index": 0})
        ending = {"stop_reason": "end_turn", "stop_sequence": None}
        final_usage = {"output_tokens": usage["output_tokens"]}
        yield _sse(
            "message_delta", {"type": "message_delta", "delta": ending, "usage": final_usage}
        )
        yield _sse("message_stop", {"type": "message_stop"})

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
        Route("/v1/messages", messages, methods=["POST"]),
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
