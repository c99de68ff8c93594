"""Application schedules: what `SLUICE_SCHEDULES_FILE` declares, read and checked.

One table per schedule; either a task with its payload, or the steps of a workflow:

    [schedules.nightly-report]
    task = "report.generate"
    payload = { report = "daily", period = "yesterday" }
    cron = "0 6 * * *"          # UTC; or: every = "15m"
    priority = "HIGH"           # optional: the task's default otherwise
    missed = "skip"             # or "once": what a beat that was down does on return

    [schedules.hourly-pipeline]
    every = "1h"
    [[schedules.hourly-pipeline.steps]]
    task = "data.sync"
    payload = { source = "crm", destination = "warehouse" }
    [[schedules.hourly-pipeline.steps]]
    task = "export.csv"
    payload = { dataset = "crm" }

`load_schedules` reports every problem at once, each naming its schedule: an unknown option,
an unknown task, every bad payload field, a bad cron or interval, an unknown priority.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celery import Celery

from producers.api import task_for
from producers.workflow import Step, check_steps, parse_steps
from schedules.beat import JOBS
from schedules.timing import Missed, Timing, cron_problem, parse_every
from sluice.errors import InvalidPayload, InvalidSchedules, UnknownTask
from sluice.message import has_secrets, validate_payload
from sluice.priorities import Priority
from sluice.sealed import can_seal

__all__ = ["AppSchedule", "read_schedules", "check_schedules", "load_schedules", "OPTIONS"]

#: the options a schedule table may hold
OPTIONS = ("task", "payload", "steps", "cron", "every", "priority", "missed")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


@dataclass(frozen=True, slots=True, kw_only=True)
class AppSchedule:
    """One application schedule: a task (with its payload and priority) or a workflow."""

    name: str
    timing: Timing
    missed: Missed = Missed.SKIP
    task: str | None = None
    payload: dict[str, Any] = field(default_factory=dict)
    priority: Priority | None = None
    steps: tuple[Step, ...] = ()

    @property
    def kind(self) -> str:
        """`task` or `workflow`."""
        return "workflow" if self.steps else "task"

    def describe(self) -> str:
        """What it fires, for tables: the task, or the tasks of the workflow's steps."""
        return self.task or " -> ".join(s.task for s in self.steps)


def read_schedules(path: Path) -> tuple[list[AppSchedule], list[str]]:
    """Parse the file: the schedules that are well formed, and a problem for each that is
    not (the task registry is not consulted: see `check_schedules`)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        return [], [f"cannot read it: {exc.strerror or exc}"]
    except tomllib.TOMLDecodeError as exc:
        return [], [f"not valid TOML: {exc}"]
    problems = [f"unknown top-level key {k!r} (schedules go in [schedules.<name>] tables)"
                for k in data if k != "schedules"]
    tables = data.get("schedules", {})
    if not isinstance(tables, dict):
        return [], [*problems, "schedules must be a table of [schedules.<name>] tables"]
    schedules = []
    for name, table in tables.items():
        schedule, errors = _parse(name, table)
        problems += [f"schedule {name!r}: {e}" for e in errors]
        if schedule is not None:
            schedules.append(schedule)
    return schedules, problems


def _parse(name: str, table: object) -> tuple[AppSchedule | None, list[str]]:
    if not isinstance(table, Mapping):
        return None, ["must be a table"]
    problems = [_unknown(key) for key in table if key not in OPTIONS]
    if not _NAME.fullmatch(name):
        problems.append("a name is letters, digits, '_', '.' or '-' (at most 100)")
    if name in JOBS:
        problems.append("that name is a Sluice maintenance job's")
    timing = _timing(table, problems)
    missed = _missed(table.get("missed", "skip"), problems)
    task, steps = table.get("task"), table.get("steps")
    parsed_steps: list[Step] = []
    if (task is None) == (steps is None):
        problems.append("give either task (with its payload) or steps (a workflow)")
    elif steps is not None:
        parsed_steps, errors = parse_steps(steps)
        problems += errors
        problems += [f"{key} belongs to each step of a workflow" for key in ("payload",
                                                                              "priority")
                     if key in table]
    elif not isinstance(task, str) or not task:
        problems.append("task must be a task name")
    payload = table.get("payload", {})
    if not isinstance(payload, Mapping):
        problems.append("payload must be a table")
    priority = _priority(table.get("priority"), problems)
    if problems or timing is None:
        return None, problems
    return AppSchedule(name=name, timing=timing, missed=missed,
                       task=str(task) if task is not None else None, payload=dict(payload),
                       priority=priority, steps=tuple(parsed_steps)), []


def _unknown(key: str) -> str:
    close = difflib.get_close_matches(key, OPTIONS, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else f" (options: {', '.join(OPTIONS)})"
    return f"unknown option {key!r}{hint}"


def _timing(table: Mapping[str, Any], problems: list[str]) -> Timing | None:
    cron, every = table.get("cron"), table.get("every")
    if (cron is None) == (every is None):
        problems.append("give exactly one of cron (\"0 6 * * *\") and every (\"15m\")")
        return None
    if cron is not None:
        problem = cron_problem(cron)
        if problem:
            problems.append(problem)
            return None
        return Timing(cron=str(cron).strip())
    try:
        return Timing(every_s=parse_every(every))
    except ValueError as exc:
        problems.append(str(exc))
        return None


def _missed(value: object, problems: list[str]) -> Missed:
    if isinstance(value, str) and value in {m.value for m in Missed}:
        return Missed(value)
    problems.append(f"missed must be \"skip\" or \"once\" (got {value!r})")
    return Missed.SKIP


def _priority(value: object, problems: list[str]) -> Priority | None:
    if value is None:
        return None
    if not isinstance(value, str):
        problems.append(f"priority must be CRITICAL, HIGH, NORMAL or LOW (got {value!r})")
        return None
    try:
        return Priority.parse(value)
    except ValueError as exc:
        problems.append(str(exc))
        return None


def check_schedules(app: Celery, schedules: list[AppSchedule]) -> list[str]:
    """Problems only the task registry can tell: an unknown task, each bad payload field, a
    task with secret fields and no SLUICE_SECRET_KEY to seal them."""
    problems = []
    for schedule in schedules:
        where = f"schedule {schedule.name!r}"
        if schedule.steps:
            problems += [f"{where}: {p}" for p in check_steps(app, schedule.steps)]
            continue
        try:
            task = task_for(app, schedule.task or "")
            if has_secrets(task.payload_model) and not can_seal():
                problems.append(f"{where}: {task.name} has secret fields: set "
                                "SLUICE_SECRET_KEY to seal them")
            validate_payload(task.name, task.payload_model, schedule.payload)
        except UnknownTask as exc:
            problems.append(f"{where}: {exc}")
        except InvalidPayload as exc:
            problems += [f"{where}: payload: {e['field']}: {e['message']}" for e in exc.errors]
    return problems


def load_schedules(path: Path, app: Celery) -> list[AppSchedule]:
    """The file's schedules, all valid; InvalidSchedules naming every problem otherwise."""
    schedules, problems = read_schedules(path)
    problems += check_schedules(app, schedules)
    if problems:
        raise InvalidSchedules(str(path), problems)
    return schedules
