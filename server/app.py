"""FastAPI routes of the OpenAI-compatible API (transport only: the endpoints' logic is in chat_api.py and
responses_api.py, the shared service in openai_api.py).

The path of a request, one direction: route -> `prepare` (every refusal a 4xx before anything is queued)
-> `OpenAIService.start` (engine admission) -> the decode thread pushes events into this loop -> the
endpoint maps them -> the response. A client that hangs up cancels its generation: a streamed one when
Starlette stops the stream, a whole one by the disconnect watcher beside it (bridge.run_watched).

The middleware are pure ASGI (disconnects reach the routes), outermost first: the localhost guard
(security.py), the request log, the API key, the body limits (limits.py). The chat page is another
set of routes; `assembly.py` adds it.
"""

from __future__ import annotations

from typing import Optional

import anyio
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import chat_api, responses_api, sse
from .api_models import APIError, ChatCompletionRequest, ResponsesRequest
from .auth import APIKeyCheck
from .bridge import run_watched
from .limits import DEFAULT_MAX_BODY_BYTES, RequestLimits
from .openai_api import OpenAIService
from .request_checks import IGNORED_HEADER, check_chat, check_responses
from .request_log import RequestLog
from .security import HostCheck, HostCheckConfig
from .tool_policy import IGNORED_TOOLS_HEADER


def _error(status: int, message: str, type_: str = "invalid_request_error", code: Optional[str] = None,
           param: Optional[str] = None) -> JSONResponse:
    return JSONResponse(APIError(status, message, type=type_, code=code, param=param).body(), status_code=status)


def create_app(service: OpenAIService, api_key: Optional[str] = None, *, guard: Optional[HostCheckConfig] = None,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> FastAPI:
    """The API behind the localhost guard (security.py), the request log and the request limits."""
    app = FastAPI(title="gptoss-metal", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    context = service.engine.context_length

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
        return service.health()

    @app.get("/v1/models")
    async def models() -> dict:
        return service.models()

    @app.get("/v1/models/{model_id}")
    async def model(model_id: str) -> dict:
        service.check_model(model_id)
        return service.model_object(model_id)

    def told(ignored: list[str], gen) -> dict[str, str]:
        """Response headers naming what the request asked for and this server ignored."""
        headers = {IGNORED_HEADER: ", ".join(ignored)} if ignored else {}
        if gen.ignored_tools:
            headers[IGNORED_TOOLS_HEADER] = ", ".join(dict.fromkeys(gen.ignored_tools))
        return headers

    async def answer(request: Request, body, endpoint, ignored: list[str]):
        # preparing tokenizes the prompt and may compile a grammar: off the event loop
        gen = await anyio.to_thread.run_sync(endpoint.generation, service, body)
        running = service.start(gen)
        record = request.state.figures = {}
        headers = told(ignored, gen)
        if body.stream:
            response = sse.response(endpoint.stream(service, body, gen, running, record))
            response.headers.update(headers)
            return response
        content = await run_watched(endpoint.complete(service, body, gen, running, record), request.receive,
                                    running.cancel)
        return JSONResponse(content, headers=headers)

    @app.post("/v1/chat/completions")
    async def chat(body: ChatCompletionRequest, request: Request):
        return await answer(request, body, chat_api, check_chat(body, context))

    @app.post("/v1/responses")
    async def responses(body: ResponsesRequest, request: Request):
        return await answer(request, body, responses_api, check_responses(body, context, service.responses))

    @app.get("/v1/responses/{response_id}")
    async def get_response(response_id: str) -> dict:
        return responses_api.retrieve(service, response_id)

    @app.delete("/v1/responses/{response_id}")
    async def delete_response(response_id: str) -> dict:
        return responses_api.delete(service, response_id)

    @app.get("/v1/responses/{response_id}/input_items")
    async def input_items(response_id: str, limit: int = Query(20), order: str = Query("desc"),
                          after: Optional[str] = Query(None)) -> dict:
        return responses_api.input_items(service, response_id, limit=limit, order=order, after=after)

    app.add_middleware(RequestLimits, max_body_bytes=max_body_bytes)  # before anything reads a body
    if api_key is not None:
        app.add_middleware(APIKeyCheck, api_key=api_key)
    app.add_middleware(RequestLog)
    app.add_middleware(HostCheck, config=guard or HostCheckConfig())  # added last: runs first
    return app
