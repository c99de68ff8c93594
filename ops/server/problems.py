"""Errors -> HTTP responses: one table, so the API answers a Sluice error the way the CLI
maps it to an exit code (usage 4xx, unavailable 503, rejected 429 + Retry-After).

Bodies name fields and problems, never the values sent (they may be secrets): pydantic's
`input` is dropped, and `InvalidPayload` already leaves values out.
"""

from __future__ import annotations

import math
from typing import Any

import redis
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError

from ops.server.errors import BodyTooLarge, Forbidden, MalformedJson, Unauthorized
from producers.pressure import BROKER_UNAVAILABLE
from sluice.errors import (
    ConfigError,
    InvalidOption,
    InvalidPayload,
    NotFound,
    PendingMigrations,
    Rejected,
    ReplayRefused,
    SluiceError,
    Unavailable,
    UnknownPriority,
    UnknownTask,
    UsageError,
)
from sluice.priorities import Priority

__all__ = ["status_for", "rejection", "retry_after", "install"]

#: most specific first: the first class the error is an instance of decides. A ConfigError
#: is the server's configuration (a missing SLUICE_SECRET_KEY), not the caller's request.
STATUS: tuple[tuple[type[SluiceError], int], ...] = (
    (Unauthorized, 401), (Forbidden, 403), (UnknownTask, 404), (NotFound, 404),
    (BodyTooLarge, 413), (MalformedJson, 400), (InvalidPayload, 422), (InvalidOption, 422),
    (UnknownPriority, 422), (ReplayRefused, 409), (ConfigError, 500), (UsageError, 400),
    (Unavailable, 503),
    (PendingMigrations, 503),
)


def status_for(exc: SluiceError) -> int:
    """The HTTP status of a Sluice error."""
    if isinstance(exc, Rejected):
        return 503 if exc.reason == BROKER_UNAVAILABLE else 429
    return next((code for cls, code in STATUS if isinstance(exc, cls)), 500)


def retry_after(seconds: float) -> str:
    """A Retry-After value: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(seconds))) if math.isfinite(seconds) else "60"


def rejection(exc: Rejected) -> dict[str, Any]:
    """What a shed submission tells its caller (the batch endpoint's item too)."""
    return {"error": "Rejected", "reason": exc.reason, "detail": str(exc),
            "level": getattr(exc.level, "name", exc.level),
            "priority": getattr(exc.priority, "name", exc.priority),
            "retry_after_s": exc.retry_after_s}


def _body(exc: SluiceError) -> dict[str, Any]:
    if isinstance(exc, Rejected):
        return rejection(exc)
    body: dict[str, Any] = {"error": type(exc).__name__, "detail": str(exc)}
    if isinstance(exc, InvalidPayload):
        body["errors"] = [{"field": e["field"], "message": e["message"], "type": e["type"]}
                          for e in exc.errors]
    elif isinstance(exc, UnknownPriority):  # its message quotes the value: say it without
        message = f"expected one of {', '.join(p.name for p in Priority)}"
        body |= {"detail": f"invalid: priority ({message})",
                 "errors": [{"field": "priority", "message": message}]}
    return body


async def sluice_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, SluiceError)
    headers = {}
    if isinstance(exc, Rejected):
        headers["Retry-After"] = retry_after(exc.retry_after_s)
    elif isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = 'Bearer realm="sluice"'
    return JSONResponse(_body(exc), status_code=status_for(exc), headers=headers)


async def invalid_request(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's own validation (query, headers, JSON bodies of operator endpoints), without
    the `input` it would echo."""
    assert isinstance(exc, RequestValidationError)
    errors = [{"field": ".".join(str(p) for p in e["loc"][1:]) or str(e["loc"][0]),
               "in": str(e["loc"][0]), "message": e["msg"], "type": e["type"]}
              for e in exc.errors()]
    fields = ", ".join(e["field"] for e in errors)
    return JSONResponse({"error": "InvalidRequest", "detail": f"invalid: {fields}",
                         "errors": errors}, status_code=422)


async def unavailable(request: Request, exc: Exception) -> JSONResponse:
    """Redis or the database failed under an operation: 503, one line, no traceback."""
    what = "Redis" if isinstance(exc, redis.RedisError) else "the database"
    return JSONResponse({"error": "Unavailable", "detail": f"{what} is unavailable "
                         f"({type(exc).__name__})"}, status_code=503,
                        headers={"Retry-After": "5"})


def install(app: Any) -> None:
    """Register the handlers on `app`."""
    app.add_exception_handler(SluiceError, sluice_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(redis.RedisError, unavailable)
    app.add_exception_handler(SQLAlchemyError, unavailable)
