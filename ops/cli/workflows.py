"""`sluice submit-workflow FILE`, `sluice workflow show ID`, `sluice schedule check`:
workflows and the application schedules (`SLUICE_SCHEDULES_FILE`)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer

from ops.cli.app import JSON, app, schedule_app
from ops.cli.output import USAGE, console, emit, fail

workflow_app = typer.Typer(help="Workflows: ordered steps, each through the gate.",
                           no_args_is_help=True)
app.add_typer(workflow_app, name="workflow")

STEP_COLUMNS = ["step", "task", "priority", "queue", "state", "attempts", "reason", "task_id",
                "dead_letter_id", "at"]


@app.command("submit-workflow")
def submit_workflow_cmd(file: Path = typer.Argument(..., help="JSON: a list of steps, or "
                                                              "{\"id\": ..., \"steps\": [...]}"),
                        workflow_id: str | None = typer.Option(None, "--id",
                                                               help="Your own workflow id"),
                        as_json: bool = JSON) -> None:
    """Submit a workflow: its first step through the gate now, each next one when the step
    before succeeds (exit 3 when the gate rejects the first step)."""
    from producers import default_producer, submit_workflow

    steps, file_id = _read_workflow(file)
    producer = default_producer()
    try:
        receipt = submit_workflow(steps, workflow_id=workflow_id or file_id, producer=producer,
                                  origin=f"cli:{file.name}")
    finally:
        producer.close()
    row = {"workflow_id": receipt.workflow_id, "steps": receipt.steps,
           "task_id": receipt.first.task_id, "queue": receipt.first.queue,
           "level": receipt.first.level.name, "duplicate": receipt.duplicate}
    emit([row] if as_json else row, as_json)


def _read_workflow(file: Path) -> tuple[list[Any], str | None]:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        fail(f"cannot read {file}: {exc.strerror or exc}", USAGE)
    except json.JSONDecodeError as exc:
        fail(f"{file} is not valid JSON: {exc}", USAGE)
    if isinstance(data, dict) and isinstance(data.get("steps"), list):
        return data["steps"], data.get("id")
    if isinstance(data, list):
        return data, None
    fail(f"{file} must hold a list of steps or {{\"steps\": [...]}}", USAGE)


@workflow_app.command("show")
def workflow_show(workflow_id: str = typer.Argument(...), as_json: bool = JSON) -> None:
    """Each step of a workflow with its state (pending, waiting, queued, succeeded,
    dead-lettered), its job and, for a dead-lettered step, the dead letter to replay."""
    from producers import workflow as wf
    from sluice.connections import redis_client

    flow = wf.load(redis_client(), workflow_id)
    rows = [_step_row(flow, status) for status in flow.status]
    if as_json:
        emit([{"workflow_id": flow.id, "workflow_state": flow.state, "origin": flow.origin,
               **row} for row in rows], True)
        return
    console.print(f"workflow [bold]{flow.id}[/bold]: {flow.state} ({flow.origin}, created "
                  f"{_iso(flow.created_at)})", highlight=False)
    emit(rows, False, STEP_COLUMNS)


def _step_row(flow: Any, status: Any) -> dict[str, Any]:
    step = flow.steps[status.step - 1]
    return {"step": status.step, "task": step.task,
            "priority": step.priority.name if step.priority else "(task's)",
            "queue": status.queue, "state": status.state.value, "attempts": status.attempts,
            "reason": status.reason, "task_id": status.task_id,
            "dead_letter_id": _dead_letter_id(status.dead_letter), "at": _iso(status.at),
            "merge": step.merge if isinstance(step.merge, bool) else list(step.merge)}


def _dead_letter_id(task_id: str | None) -> int | None:
    """The dead letter stored under `task_id` (None if none, or the store is away)."""
    if not task_id:
        return None
    from sqlalchemy.exc import SQLAlchemyError

    from dlq.store import DeadLetterStore
    from sluice.errors import NotFound

    try:
        return DeadLetterStore().get_by_task_id(task_id).id
    except (NotFound, SQLAlchemyError):
        return None


def _iso(epoch: float | None) -> str | None:
    import datetime as dt

    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat(timespec="seconds") \
        if epoch else None


@schedule_app.command("check")
def schedule_check(file: Path | None = typer.Option(
                       None, "--file", help="Default: SLUICE_SCHEDULES_FILE"),
                   as_json: bool = JSON) -> None:
    """Check the application schedules as beat does when it starts: unknown tasks or options,
    bad payloads, cron expressions and intervals, each named by schedule (exit 2)."""
    from schedules.definitions import load_schedules
    from sluice.app import app as celery_app
    from sluice.errors import InvalidSchedules
    from sluice.settings import get_settings

    path = file or get_settings().schedules_file
    if path is None:
        fail("no schedules file: set SLUICE_SCHEDULES_FILE or pass --file", USAGE)
    celery_app.loader.import_default_modules()
    try:
        schedules = load_schedules(path, celery_app)
    except InvalidSchedules as exc:
        fail("\n  ".join([f"invalid schedules file {path}:", *exc.problems]), USAGE)
    now = time.time()
    rows = [{"schedule": s.name, "kind": s.kind, "fires": s.describe(),
             "when": s.timing.describe(), "priority": s.priority.name if s.priority else None,
             "missed": s.missed.value, "next_run": _iso(s.timing.next(now))} for s in schedules]
    emit(rows, as_json, ["schedule", "kind", "fires", "when", "priority", "missed", "next_run"],
         f"{path}: {len(rows)} schedule(s), valid")
