"""audit.record (CRITICAL): append an audit-log entry."""

from __future__ import annotations

import logging
import time

from celery import current_task
from pydantic import BaseModel, Field

from sluice.priorities import Priority
from workers import effects
from workers.base import sluice_task

log = logging.getLogger("sluice.worker")


class AuditRecord(BaseModel):
    actor: str = Field(min_length=1)
    action: str = Field(min_length=1)
    target: str = ""
    linger_s: float = Field(0.0, ge=0, le=60, description="time held after the write "
                            "(simulates waiting on a downstream confirmation)")


@sluice_task("audit.record", Priority.CRITICAL, AuditRecord)
def record(payload: AuditRecord) -> None:
    applied = effects.put("audit", current_task.effect_key, {
        "task_id": current_task.request.id, "actor": payload.actor, "action": payload.action,
        "target": payload.target})
    if not applied:
        log.info("audit.record %s: effect already applied, skipped", current_task.request.id)
    time.sleep(payload.linger_s)
