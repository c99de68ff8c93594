"""A submission before it is sent: what the caller gets back (`Receipt`), what the gate let
through (`Plan`), and the checks made in memory before any I/O."""

from __future__ import annotations

import datetime as dt
import math
import time
from dataclasses import dataclass, field
from typing import Any

from celery import Celery
from kombu.utils.uuid import uuid

from producers.pressure import Decision
from sluice.errors import InvalidOption, UnknownTask
from sluice.message import (
    DEFAULT_TENANT,
    H_GENERATION,
    H_KEY,
    H_ORIGIN,
    H_PRIORITY,
    H_SUBMITTED,
    H_TENANT,
)
from sluice.priorities import PressureLevel, Priority
from sluice.settings import Settings

__all__ = ["Receipt", "Plan", "task_for", "check_countdown", "tenant_of"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Receipt:
    """What an accepted submission returns."""

    task_id: str
    queue: str
    level: PressureLevel
    delayed_ms: int = 0
    duplicate: bool = False
    outboxed: bool = False  #: kept in the durable outbox; sent once Redis answers
    task_name: str = ""
    priority: Priority = Priority.NORMAL


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """A validated submission that the gate let through, not yet sent."""

    task_name: str
    payload: Any
    priority: Priority
    level: PressureLevel
    decision: Decision
    key: str | None = None         #: idempotency key to claim
    expires: dt.datetime | None = None  #: when it is dropped if not started by then
    countdown: float | None = None
    task_id: str = field(default_factory=uuid)
    origin: str | None = None      #: a replay's original task id
    effect_key: str | None = None  #: what effects are keyed by (default: `key`)
    generation: int = 0            #: n for the n-th replay
    printable: str | None = None   #: argsrepr with secrets masked
    tenant: str = DEFAULT_TENANT
    extra: dict[str, Any] = field(default_factory=dict)  #: the caller's own headers

    def headers(self) -> dict[str, Any]:
        return self.extra | {H_KEY: self.effect_key or self.key, H_SUBMITTED: time.time(),
                             H_PRIORITY: self.priority.name, H_ORIGIN: self.origin,
                             H_GENERATION: self.generation, H_TENANT: self.tenant}

    def receipt(self, **changes: Any) -> Receipt:
        values: dict[str, Any] = dict(
            task_id=self.task_id, queue=self.priority.queue, level=self.level,
            delayed_ms=self.decision.delay_ms, task_name=self.task_name,
            priority=self.priority)
        return Receipt(**(values | changes))


def task_for(app: Celery, name: str) -> Any:
    """The registered Sluice task `name`; UnknownTask when there is none."""
    task = app.tasks.get(name)
    if task is None:
        app.loader.import_default_modules()
        task = app.tasks.get(name)
    if task is None or getattr(task, "payload_model", None) is None:
        known = [n for n, t in app.tasks.items() if getattr(t, "payload_model", None)]
        raise UnknownTask(name, known)
    return task


def check_countdown(countdown: float | None, task: Any, settings: Settings) -> None:
    """A job held for its countdown longer than the visibility timeout is handed out again
    by Redis and runs twice: refuse such a countdown, naming the limit."""
    if countdown is None:
        return
    limit = settings.visibility_timeout - (getattr(task, "time_limit", None)
                                           or settings.task_time_limit)
    if not math.isfinite(countdown) or countdown < 0 or countdown >= limit:
        raise InvalidOption(
            f"countdown {countdown:g}s for {task.name!r} is out of range: it must be >= 0 and "
            f"below {max(limit, 0)}s (SLUICE_VISIBILITY_TIMEOUT {settings.visibility_timeout}s "
            f"minus the task's time limit), or Redis redelivers the job while it waits. "
            "Schedule longer delays with a beat schedule instead.")


def tenant_of(task: Any, payload: Any, tenant: str | None) -> str:
    """Whose job this is: the caller's `tenant`, else the payload field the task declares
    as its tenant key (`sluice_task(tenant_field=...)`), else `default`."""
    if tenant is None:
        fieldname = getattr(task, "tenant_field", None)
        value = payload.get(fieldname) if fieldname and isinstance(payload, dict) else None
        tenant = None if value is None else str(value)
    if tenant is None:
        return DEFAULT_TENANT
    if not isinstance(tenant, str) or not tenant or len(tenant) > 200:
        raise InvalidOption(f"tenant {tenant!r} for {task.name!r} must be a non-empty string "
                            "of at most 200 characters")
    return tenant
