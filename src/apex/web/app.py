"""The browser app at `/`: plain HTML, CSS and JavaScript modules shipped inside the
package (no build step, no CDN, nothing remote), talking to Apex only through the public
API under the strict Content-Security-Policy every answer carries. See
docs/architecture.md ("The browser app") for why it is built this way."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

APP = Path(__file__).parent / "app"
router = APIRouter(include_in_schema=False)


@router.get("/")
async def index() -> FileResponse:
    # Revalidated every time: a new release's modules are picked up at the next load.
    return FileResponse(APP / "index.html", headers={"Cache-Control": "no-cache"})


def mount_app(app: FastAPI) -> None:
    app.include_router(router)
    app.mount("/app", StaticFiles(directory=str(APP)), name="app-assets")
