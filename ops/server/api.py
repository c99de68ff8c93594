"""The rest of `/v1`: pressure, tasks, dead letters, kill switches, schedules, workers, the
audit log; and `/health`. Each route calls what the matching `sluice` command calls:
`killswitch.turn_on`, `DeadLetterStore.find`, `dlq.replay.replay_one`, ..."""

from __future__ import annotations

import datetime as dt
import time
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from dlq.replay import ReplayResult, replay_one
from ops.server import actions, audit, deps
from ops.server.auth import Caller, operator, submitter
from ops.server.dead_letters import (
    MAX_PAGE,
    BulkRequest,
    DeadLetterQuery,
    error_groups,
    flower_link,
    row_dict,
)
from ops.server.deps import Redis, Store
from ops.server.views import (
    pressure_view,
    schedule_rows,
    submission_counts,
    task_rows,
    worker_rows,
)
from producers import killswitch

__all__ = ["router", "health"]

router = APIRouter(prefix="/v1")
health = APIRouter()

Operator = Annotated[Caller, Depends(operator)]


@health.get("/health", tags=["health"])
def health_check() -> dict[str, Any]:
    """Up, and the level the gate last saw (no I/O: load balancers poll this)."""
    return {"status": "ok", "level": deps.producer().monitor.snapshot.level.name}


@router.get("/pressure", tags=["pressure"])
def pressure(client: Redis, _: Caller = Depends(submitter)) -> dict[str, Any]:
    """Level, depth and oldest job's age per queue, drain rate, predicted waits, counters."""
    snap = deps.producer().monitor.current()
    return pressure_view(snap, deps.settings(), submission_counts(client))


@router.get("/tasks", tags=["tasks"])
def tasks(_: Caller = Depends(submitter)) -> list[dict[str, Any]]:
    """Every task: name, default priority, queue, payload schema (as `sluice tasks`)."""
    return task_rows(deps.producer().app)


# -- dead letters ----------------------------------------------------------------------------

class DeadLetterPage(DeadLetterQuery):
    """The filters, and which page of the newest-first list."""

    limit: int = Field(50, ge=1, le=MAX_PAGE)
    offset: int = Field(0, ge=0)


@router.get("/dead-letters", tags=["dead letters"])
def dead_letters(page: Annotated[DeadLetterPage, Query()], store: Store,
                 _: Operator) -> dict[str, Any]:
    """Newest first, filtered (as `sluice dlq ls`), with the total that match."""
    filters = page.filters(dt.datetime.now(dt.UTC))
    rows = store.list(filters, page.limit, page.offset)
    return {"total": store.count(filters), "items": [row_dict(r) for r in rows]}


@router.get("/dead-letters/groups", tags=["dead letters"])
def dead_letter_groups(query: Annotated[DeadLetterQuery, Query()], store: Store,
                       _: Operator) -> list[dict[str, Any]]:
    """The matching failures grouped by task and exception type, largest group first."""
    return error_groups(store, query.filters(dt.datetime.now(dt.UTC)))


@router.get("/dead-letters/{ref}", tags=["dead letters"])
def dead_letter(ref: str, store: Store, _: Operator) -> dict[str, Any]:
    """One dead letter by id or task id, traceback included (as `sluice dlq show`)."""
    row = store.find(ref)
    return row_dict(row, full=True) | {"flower_url": flower_link(deps.settings(), row.task_id)}


@router.post("/dead-letters/replay", tags=["dead letters"])
def replay_many(selection: BulkRequest, store: Store, client: Redis,
                caller: Operator) -> dict[str, Any]:
    """Replay the selected rows through the gate; recorded in the audit log."""
    ids = selection.resolve(store, dt.datetime.now(dt.UTC))
    return actions.bulk("replay", store, client, caller, ids, selection.scope())


@router.post("/dead-letters/discard", tags=["dead letters"])
def discard_many(selection: BulkRequest, store: Store, client: Redis,
                 caller: Operator) -> dict[str, Any]:
    """Mark the selected rows discarded; recorded in the audit log."""
    ids = selection.resolve(store, dt.datetime.now(dt.UTC))
    return actions.bulk("discard", store, client, caller, ids, selection.scope())


@router.post("/dead-letters/{dead_letter_id}/replay", tags=["dead letters"])
def replay(dead_letter_id: int, store: Store, client: Redis, caller: Operator) -> JSONResponse:
    """Replay one row through the gate: 202 when sent, 429 when the gate shed it (the row
    stays as it was, the reason noted), 409 when its status forbids a replay."""
    outcome = replay_one(store, deps.producer(), dead_letter_id)
    body = {"id": outcome.id, "outcome": outcome.outcome.value, "task_id": outcome.task_id,
            "reason": outcome.reason}
    audit.record(client, caller, "replay", {"ids": 1, "id": dead_letter_id}, body)
    return JSONResponse(body, status_code=202 if outcome.outcome is ReplayResult.REPLAYED
                        else 429)


@router.post("/dead-letters/{dead_letter_id}/discard", tags=["dead letters"])
def discard(dead_letter_id: int, store: Store, client: Redis,
            caller: Operator) -> dict[str, Any]:
    """Mark one row discarded (pending or exhausted rows only)."""
    store.get(dead_letter_id)  # NotFound names the id
    return actions.bulk("discard", store, client, caller, [dead_letter_id],
                        {"id": dead_letter_id})


# -- kill switches, schedules, workers, audit -------------------------------------------------

class SwitchOn(BaseModel):
    reason: str = Field("switched off", min_length=1, max_length=200)


@router.get("/killswitches", tags=["kill switches"])
def switches(client: Redis, _: Operator) -> list[dict[str, str]]:
    """The kill switches that are on (as `sluice killswitch ls`)."""
    return [{"target": k, "reason": v}
            for k, v in sorted(killswitch.list_switches(client).items())]


@router.put("/killswitches/{target}", tags=["kill switches"])
def switch_on(target: str, client: Redis, caller: Operator,
              body: Annotated[SwitchOn | None, Body()] = None) -> dict[str, Any]:
    """Refuse new submissions of `priority:LOW` or `task:email.send` (KILL_SWITCH)."""
    reason = (body or SwitchOn()).reason
    return {"target": actions.switch_on(client, caller, target, reason), "reason": reason,
            "on": True}


@router.delete("/killswitches/{target}", tags=["kill switches"])
def switch_off(target: str, client: Redis, caller: Operator) -> dict[str, Any]:
    """Lift a kill switch."""
    was_on = actions.switch_off(client, caller, target)
    return {"target": killswitch.switch_key(target), "on": False, "was_on": was_on}


@router.get("/schedules", tags=["operations"])
def schedules(_: Operator) -> list[dict[str, Any]]:
    """Each beat job: interval, runs, last run, next run, outcome (`sluice schedule ls`)."""
    return schedule_rows(time.time())


@router.get("/workers", tags=["operations"])
def workers(client: Redis, _: Operator) -> list[dict[str, Any]]:
    """Each worker: heartbeat age, jobs held, readiness (what `sluice doctor` knows)."""
    return worker_rows(client)


@router.get("/audit", tags=["operations"])
def audit_log(client: Redis, _: Operator,
              limit: int = Query(100, ge=1, le=audit.KEEP)) -> list[dict[str, Any]]:
    """The latest operator actions: who, when, what, how many, outcome."""
    return audit.recent(client, limit)
