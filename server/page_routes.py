"""HTTP routes of the chat page: its files at `/` and `/static/`, its API under `/ui/api`.

The page is plain files shipped in the package (static/; third-party libraries are vendored in
static/vendor/ with their licences): no CDN, no build step, nothing fetched at run time.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI, Query
from fastapi.responses import FileResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles

from .api_models import ConversationPatch, PageSettings, TurnRequest
from .page_api import PageService
from .streams import SSE_HEADERS

STATIC = Path(__file__).with_name("static")
NO_STORE = {"Cache-Control": "no-store"}


def add_page(app: FastAPI, page: PageService) -> None:
    api = APIRouter(prefix="/ui/api")

    @api.get("/info")
    async def info() -> dict:
        return page.info()

    @api.get("/conversations")
    async def conversations() -> dict:
        return page.list()

    @api.post("/conversations", status_code=201)
    async def create(body: PageSettings) -> dict:
        return page.create(body)

    @api.get("/conversations/{conv_id}")
    async def get(conv_id: str) -> dict:
        return page.get(conv_id)

    @api.patch("/conversations/{conv_id}")
    async def patch(conv_id: str, body: ConversationPatch) -> dict:
        return page.patch(conv_id, body)

    @api.delete("/conversations/{conv_id}")
    async def delete(conv_id: str) -> dict:
        return page.delete(conv_id)

    @api.get("/conversations/{conv_id}/export")
    async def export(conv_id: str, format: str = Query("json")) -> Response:
        body, media, name = page.export(conv_id, format)
        return Response(body, media_type=media,
                        headers={"Content-Disposition": f'attachment; filename="{name}"', **NO_STORE})

    @api.post("/conversations/{conv_id}/turn")
    async def turn(conv_id: str, body: TurnRequest) -> StreamingResponse:
        job = page.start_turn(conv_id, body)
        return StreamingResponse(page.turn_events(conv_id, job), media_type="text/event-stream",
                                 headers=SSE_HEADERS)

    @api.post("/conversations/{conv_id}/stop")
    async def stop(conv_id: str) -> dict:
        return page.stop(conv_id)

    app.include_router(api)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8", headers=NO_STORE)

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> FileResponse:
        return FileResponse(STATIC / "icon.svg", media_type="image/svg+xml")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
