"""`POST /v1/jobs/{task}` and `POST /v1/jobs/{task}/batch`: the HTTP door to the gate.

The handlers call `Producer.submit_async` and `Producer.submit_many`, the functions behind
`submit()` and `sluice submit`. A shed submission costs what the gate costs: the token is a
dict lookup, the decision is made in memory, and the 429 is built without any round trip.
Each task gets its own documented route, whose body schema is the task's payload model; the
body is validated by the producer (`InvalidPayload`: every bad field, never a value), not by
FastAPI, so that every face gives the same answer.
"""

from __future__ import annotations

import inspect
import json
from typing import Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from ops.server.auth import Caller, submitter
from ops.server.deps import producer
from ops.server.errors import BodyTooLarge, Forbidden, MalformedJson
from ops.server.problems import rejection, status_for
from producers import Producer, Receipt
from producers.plan import task_for
from sluice.errors import InvalidPayload, Rejected
from sluice.settings import get_settings

__all__ = ["task_routes", "read_json", "receipt_dict", "MAX_BATCH",
           "SUPPORTS_TENANT"]

#: items per batch request; more is refused with 413 (split the batch)
MAX_BATCH = 1000
#: whether this producer takes `tenant=` (tenants came after the first producer API)
SUPPORTS_TENANT = all("tenant" in inspect.signature(fn).parameters
                      for fn in (Producer.submit_async, Producer.submit_many))

RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "the body is not valid JSON"},
    401: {"description": "no valid bearer token"},
    403: {"description": "the token may not submit (or not for that tenant)"},
    404: {"description": "no task of that name"},
    413: {"description": "the body is larger than SLUICE_SERVER_MAX_BODY"},
    422: {"description": "invalid payload or option: every bad field is named"},
    429: {"description": "shed by the gate: `reason` says why, `Retry-After` when to retry",
          "headers": {"Retry-After": {"schema": {"type": "integer"}}}},
    503: {"description": "the broker is down (CRITICAL jobs are accepted into the outbox)",
          "headers": {"Retry-After": {"schema": {"type": "integer"}}}},
}


class BatchOptions:
    """The query options a batch shares with a single submission."""

    def __init__(self,
                 priority: str | None = Query(None, description="CRITICAL, HIGH, NORMAL or LOW "
                                              "(default: the task's)"),
                 deadline: float | None = Query(None, gt=0, description="seconds the job may "
                                                "wait before it starts"),
                 tenant: str | None = Query(None, min_length=1, max_length=200,
                                            description="whose job (default: the token's)")
                 ) -> None:
        self.priority, self.deadline, self.tenant = priority, deadline, tenant


class SubmitOptions:
    """A single submission's options: the batch's, an idempotency key and a countdown."""

    def __init__(self, shared: BatchOptions = Depends(),
                 countdown: float | None = Query(None, ge=0, description="seconds before it "
                                                 "is due"),
                 idempotency_key: str | None = Header(
                     None, alias="Idempotency-Key", min_length=1, max_length=200,
                     description="a second submission with this key within 24 h returns the "
                                 "first one's task id")) -> None:
        self.priority, self.deadline, self.tenant = shared.priority, shared.deadline, \
            shared.tenant
        self.countdown, self.key = countdown, idempotency_key


async def read_json(request: Request, limit: int) -> Any:
    """The body as JSON: BodyTooLarge past `limit` bytes (declared or streamed),
    MalformedJson when it does not parse (the message says where, not what)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"the body is {declared} bytes; at most {limit} are accepted "
                           "(SLUICE_SERVER_MAX_BODY)")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge(f"the body is over {limit} bytes (SLUICE_SERVER_MAX_BODY)")
    try:
        return json.loads(body, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise MalformedJson(f"the body is not valid JSON: {exc.msg} at line {exc.lineno} "
                            f"column {exc.colno}") from None
    except (ValueError, UnicodeDecodeError):
        raise MalformedJson("the body is not valid JSON (UTF-8, no NaN or Infinity)") from None


def _no_constant(name: str) -> Any:
    raise ValueError(name)


def receipt_dict(receipt: Receipt, task: str, tenant: str | None) -> dict[str, Any]:
    """The receipt as JSON (the same fields `sluice submit --json` prints)."""
    return {"task_id": receipt.task_id, "task": task, "queue": receipt.queue,
            "priority": receipt.priority.name, "level": receipt.level.name,
            "delayed_ms": receipt.delayed_ms, "duplicate": receipt.duplicate,
            "outboxed": receipt.outboxed, "tenant": tenant}


def tenant_for(caller: Caller, requested: str | None) -> str | None:
    """A token bound to a tenant submits for that tenant only; others may name one."""
    if caller.tenant is not None and requested not in (None, caller.tenant):
        raise Forbidden("this token submits for its own tenant only")
    tenant = caller.tenant or requested
    return tenant if SUPPORTS_TENANT else None


def _tenant(tenant: str | None) -> dict[str, Any]:
    return {} if tenant is None else {"tenant": tenant}


async def submit_one(request: Request, task: str, options: SubmitOptions,
                     caller: Caller) -> JSONResponse:
    """One job: 202 with the receipt; errors become statuses in `ops.server.problems`."""
    gate = producer()
    task_for(gate.app, task)  # 404 before reading a body meant for no one
    tenant = tenant_for(caller, options.tenant)
    payload = await read_json(request, get_settings().server_max_body)
    receipt = await gate.submit_async(task, payload, priority=options.priority,
                                      idempotency_key=options.key, countdown=options.countdown,
                                      deadline=options.deadline, **_tenant(tenant))
    return JSONResponse(receipt_dict(receipt, task, tenant), status_code=202)


async def submit_batch(request: Request, task: str, options: BatchOptions,
                       caller: Caller) -> JSONResponse:
    """Many jobs in one pipeline: 200 with a result per item, in order (202 with the
    receipt, or 429/503 with the reason). One invalid payload: 422 and nothing sent."""
    gate = producer()
    task_for(gate.app, task)
    tenant = tenant_for(caller, options.tenant)
    payloads = await read_json(request, get_settings().server_max_body)
    if not isinstance(payloads, list):
        raise InvalidPayload(task, [{"field": "(body)", "type": "list_type",
                                     "message": "expected a JSON array of payloads"}])
    if len(payloads) > MAX_BATCH:
        raise BodyTooLarge(f"{len(payloads)} items; at most {MAX_BATCH} per batch")
    outs = await run_in_threadpool(gate.submit_many, task, payloads, priority=options.priority,
                                   deadline=options.deadline, **_tenant(tenant))
    items = [_item(i, out, task, tenant) for i, out in enumerate(outs)]
    accepted = sum(1 for item in items if item["status"] == 202)
    return JSONResponse({"accepted": accepted, "rejected": len(items) - accepted,
                         "items": items})


def _item(index: int, out: Receipt | Rejected, task: str, tenant: str | None) -> dict[str, Any]:
    if isinstance(out, Rejected):
        return {"index": index, "status": status_for(out), **rejection(out)}
    return {"index": index, "status": 202, **receipt_dict(out, task, tenant)}


# -- routes --------------------------------------------------------------------------------

def _body_schema(name: str, batch: bool) -> dict[str, Any]:
    ref: dict[str, Any] = {"$ref": f"#/components/schemas/{name}"}
    schema = {"type": "array", "items": ref, "maxItems": MAX_BATCH} if batch else ref
    return {"requestBody": {"required": True,
                            "content": {"application/json": {"schema": schema}}}}


def _one(name: str) -> Any:
    async def endpoint(request: Request, options: SubmitOptions = Depends(),
                       caller: Caller = Depends(submitter)) -> JSONResponse:
        return await submit_one(request, name, options, caller)
    return endpoint


def _many(name: str) -> Any:
    async def endpoint(request: Request, options: BatchOptions = Depends(),
                       caller: Caller = Depends(submitter)) -> JSONResponse:
        return await submit_batch(request, name, options, caller)
    return endpoint


def task_routes(names: list[str]) -> APIRouter:
    """A documented route per task (body: its payload model), then the catch-all that
    answers 404 for a name no task has."""
    target = APIRouter(tags=["jobs"])
    for name in names:
        target.add_api_route(f"/v1/jobs/{name}", _one(name), methods=["POST"], status_code=202,
                             summary=f"Submit one {name} job", responses=RESPONSES,
                             openapi_extra=_body_schema(name, False), name=f"submit:{name}")
        target.add_api_route(f"/v1/jobs/{name}/batch", _many(name), methods=["POST"],
                             summary=f"Submit a batch of {name} jobs", responses=RESPONSES,
                             openapi_extra=_body_schema(name, True), name=f"batch:{name}")
    target.add_api_route("/v1/jobs/{task}", _any_one, methods=["POST"], status_code=202,
                         include_in_schema=False)
    target.add_api_route("/v1/jobs/{task}/batch", _any_many, methods=["POST"],
                         include_in_schema=False)
    return target


async def _any_one(task: str, request: Request, options: SubmitOptions = Depends(),
                   caller: Caller = Depends(submitter)) -> JSONResponse:
    return await submit_one(request, task, options, caller)


async def _any_many(task: str, request: Request, options: BatchOptions = Depends(),
                    caller: Caller = Depends(submitter)) -> JSONResponse:
    return await submit_batch(request, task, options, caller)
