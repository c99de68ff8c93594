"""audit.record (CRITICAL): append an audit-log entry."""

from __future__ import annotations

import time

from celery import current_task
from pydantic import BaseModel, Field

from sluice.priorities import Priority
from workers import effects
from workers.base import sluice_task


class AuditRecord(BaseModel):
    actor: str = Field(min_length=1)
    action: str = Field(min_length=1)
    target: str = ""
    linger_s: float = Field(0.0, ge=0, le=60, description="time held after the write "
                            "(simulates waiting on a downstream confirmation)")


@sluice_task("audit.record", Priority.CRITICAL, AuditRecord)
def record(payload: AuditRecord) -> None:
    current_task.effect_once(lambda: effects.append("audit", {
        "task_id": current_task.request.id, "actor": payload.actor, "action": payload.action,
        "target": payload.target}))
    time.sleep(payload.linger_s)
