"""The OpenAI-compatible HTTP API (FastAPI) in front of the registry and the batching engine.

:func:`create_app` only assembles: the state, the error handlers (every error has the OpenAI shape
``{"error": {"message", "type", "param", "code"}}`` and a 4xx status when the client can fix it), the routes
(``routes.py``, ``admin.py``), the UI and an OpenAPI document that includes the request bodies.
"""

from __future__ import annotations

import threading
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from adapterlab.serve import admin, routes
from adapterlab.serve.errors import ErrorBody, LastResortErrors, SafeJSONResponse, install_error_handlers
from adapterlab.serve.registry import Registry
from adapterlab.serve.schemas import AdapterLoad, ChatRequest, ClassifyRequest, CompletionRequest
from adapterlab.serve.settings import ServeSettings
from adapterlab.serve.state import State

DOCUMENTED_BODIES = (ChatRequest, CompletionRequest, ClassifyRequest, AdapterLoad, ErrorBody)


def create_app(registry: Registry, settings: ServeSettings | None = None) -> FastAPI:
    settings = settings or ServeSettings()
    state = State(registry, settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        threading.Thread(target=state.load, name="adapterlab-load", daemon=True).start()
        yield
        await run_in_threadpool(state.stop)

    app = FastAPI(title="adapterlab", version=routes.server_version(), lifespan=lifespan, docs_url="/docs",
                  redoc_url=None, default_response_class=SafeJSONResponse)  # fmt: skip
    app.state.adapterlab = state
    if settings.cors_origin:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origin, allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["Authorization", "Content-Type"])  # fmt: skip
    app.add_middleware(LastResortErrors)
    install_error_handlers(app)
    app.include_router(routes.router)
    app.include_router(admin.router)
    if settings.ui:
        from adapterlab.serve.ui import mount_ui

        mount_ui(app)
    app.openapi = lambda: openapi_document(app)  # type: ignore[method-assign]
    return app


def openapi_document(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document plus the schemas of the bodies the routes read themselves (``routes.json_body``)."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi
        from pydantic.json_schema import models_json_schema

        document = get_openapi(title=app.title, version=app.version, routes=app.routes)
        _, definitions = models_json_schema(
            [(model, "validation") for model in DOCUMENTED_BODIES], ref_template="#/components/schemas/{model}"
        )
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        schemas.update(definitions.get("$defs", {}))
        # Path parameters made FastAPI add its 422 validation error; this API answers 400 in the OpenAI shape.
        for operations in document["paths"].values():
            for operation in operations.values():
                operation.get("responses", {}).pop("422", None)
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        app.openapi_schema = document
    return app.openapi_schema
