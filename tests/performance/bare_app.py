"""The baseline of the request-path benchmark: a bare FastAPI route on the same uvicorn as
`apex serve` (same loop, HTTP parser and options).

Run as `python -m tests.performance.bare_app PORT`."""

from __future__ import annotations

import sys

import uvicorn
from fastapi import FastAPI

app = FastAPI()


@app.get("/bare")
async def bare() -> dict[str, str]:
    return {"id": "00000000-0000-7000-8000-000000000000", "name": "Bare", "tier": "enterprise"}


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


if __name__ == "__main__":
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        log_config=None,
        proxy_headers=True,
        lifespan="on",
        timeout_graceful_shutdown=10,
    )
