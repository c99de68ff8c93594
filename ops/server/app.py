"""The ASGI application behind `sluice server`: the `/v1` API, `/health`, the console, and
the OpenAPI document (at `/docs`) whose request bodies are the registered payload models.

`create_app()` reads the tokens once (a bad SLUICE_API_TOKENS fails here, naming the entry)
and starts the process-wide producer's pressure monitor with the app, so that the first
submission already decides on a fresh snapshot.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import RedirectResponse
from pydantic import BaseModel

from ops.server import api, console, jobs, problems
from ops.server.auth import Tokens
from ops.server.deps import producer
from ops.server.views import task_models
from sluice.settings import Settings, get_settings

__all__ = ["create_app"]

DESCRIPTION = """Submit jobs through Sluice's gate from any language, and operate the queue.

Every call but `/health` needs `Authorization: Bearer <token>` (SLUICE_API_TOKENS). A shed
submission answers 429 with `Retry-After` and the reason; the body of `POST /v1/jobs/{task}`
is the task's payload model, shown below per task."""


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Sample the pressure from the start; on the way out stop the monitor (which flushes
    this process's submission counters)."""
    gate = producer()
    gate.start()
    try:
        yield
    finally:
        gate.close()


def create_app(settings: Settings | None = None, tokens: Tokens | None = None) -> FastAPI:
    """The application, for uvicorn (`sluice server`) or a test client."""
    settings = settings or get_settings()
    app = FastAPI(title="Sluice", description=DESCRIPTION, version="1",
                  lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.tokens = tokens if tokens is not None else Tokens.from_settings(settings)
    models = task_models(producer().app)
    app.include_router(api.health)
    app.include_router(jobs.task_routes(list(models)))
    app.include_router(api.router)
    console.mount(app)
    problems.install(app)
    app.add_api_route("/", _home, include_in_schema=False)
    app.openapi = lambda: _openapi(app, models)  # type: ignore[method-assign]
    return app


def _home() -> RedirectResponse:
    return RedirectResponse("/console/", status_code=303)


def _openapi(app: FastAPI, models: dict[str, type[BaseModel]]) -> dict[str, Any]:
    """FastAPI's document, plus a component per task (its payload model's JSON schema,
    nested models hoisted beside it) for the task routes' `$ref`s."""
    if app.openapi_schema is None:
        doc = get_openapi(title=app.title, version=app.version, description=app.description,
                          routes=app.routes)
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        for name, model in models.items():
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(schema.pop("$defs", {}))
            schemas[name] = schema
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http",
                                                           "scheme": "bearer"}}
        doc["security"] = [{"bearer": []}]
        app.openapi_schema = doc
    return app.openapi_schema
