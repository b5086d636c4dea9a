"""FastAPI routes of the OpenAI-compatible server (transport only; logic is in openai_api.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .api_models import APIError, ChatCompletionRequest, ResponsesRequest
from .auth import bearer_token, key_matches
from .limits import DEFAULT_MAX_BODY_BYTES, RequestLimits
from .openai_api import OpenAIService
from .request_checks import check_chat, check_responses
from .security import API_PREFIXES, GuardConfig, LocalServerGuard
from .streams import SSE_HEADERS

if TYPE_CHECKING:
    from .page_api import PageService


async def _streaming_disconnect_check() -> bool:
    """Streams are not polled: Starlette's StreamingResponse watches the connection itself and
    cancels the stream when the client leaves; polling `receive` beside it would compete with that
    watcher for the same ASGI messages."""
    return False


def _error(status: int, message: str, type_: str = "invalid_request_error", code: Optional[str] = None,
           param: Optional[str] = None) -> JSONResponse:
    return JSONResponse(APIError(status, message, type=type_, code=code, param=param).body(), status_code=status)


def create_app(service: OpenAIService, api_key: Optional[str] = None, *, page: Optional["PageService"] = None,
               guard: Optional[GuardConfig] = None, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> FastAPI:
    """The API, and the chat page when `page` is given, behind the localhost guard (security.py) and the
    request limits (limits.py)."""
    app = FastAPI(title="gptoss-metal", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    context = service.engine.model.args.max_position_embeddings

    @app.middleware("http")
    async def auth(request: Request, call_next):
        if api_key is not None and request.url.path.startswith(API_PREFIXES):
            if not key_matches(bearer_token(request.headers.get("authorization", "")), api_key):
                return _error(401, "Incorrect or missing API key (send `Authorization: Bearer <key>`).",
                              code="invalid_api_key")
        return await call_next(request)

    @app.exception_handler(APIError)
    async def api_error(_: Request, e: APIError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {}
        loc = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        if first.get("type") == "json_invalid":
            return _error(400, "The request body is not valid JSON.", code="invalid_json")
        if tuple(first.get("loc", ())) == ("body",):
            return _error(400, "The request body must be a JSON object (send Content-Type: application/json).",
                          code="invalid_body")
        return _error(400, f"Invalid request: {loc or 'body'}: {first.get('msg', 'invalid')}", param=loc or None)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:
        return _error(e.status_code, str(e.detail), code="not_found" if e.status_code == 404 else None)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": service.model_id, "queued": service.scheduler.pending,
                "busy": service.scheduler.running is not None}

    @app.get("/v1/models")
    async def models() -> dict:
        return service.models()

    @app.get("/v1/models/{model_id}")
    async def model(model_id: str) -> dict:
        service.check_model(model_id)
        return {"id": model_id, "object": "model", "created": service.created, "owned_by": "gptoss-metal"}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatCompletionRequest, request: Request):
        check_chat(body, context)
        if not body.stream:
            return await service.chat(body, request.is_disconnected)
        gen = service.chat_generation(body)
        job = service.submit(gen)
        return StreamingResponse(service.chat_stream(body, gen, job, _streaming_disconnect_check),
                                 media_type="text/event-stream", headers=SSE_HEADERS)

    @app.post("/v1/responses")
    async def responses(body: ResponsesRequest, request: Request):
        check_responses(body, context, service.responses)
        if not body.stream:
            return await service.respond(body, request.is_disconnected)
        gen = service.responses_generation(body)
        job = service.submit(gen)
        return StreamingResponse(service.respond_stream(body, gen, job, _streaming_disconnect_check),
                                 media_type="text/event-stream", headers=SSE_HEADERS)

    if page is not None:
        from .page_routes import add_page

        add_page(app, page)
    app.add_middleware(RequestLimits, max_body_bytes=max_body_bytes)  # before anything reads a body
    app.add_middleware(LocalServerGuard, config=guard or GuardConfig())  # added last: runs first
    return app
