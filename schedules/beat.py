"""The beat schedule, built from settings (pure: no Celery, no I/O)."""

from __future__ import annotations

from typing import Any

from sluice.settings import Settings

__all__ = ["build_schedule", "JOBS", "APP_ENTRY", "APP_TASK", "APP_CHECK_S"]

#: schedule entry name -> (task name, settings field with its interval, queue)
JOBS: dict[str, tuple[str, str, str]] = {
    "reconcile": ("schedules.reconcile", "reconcile_interval", "critical"),
    "retry-dead-letters": ("schedules.retry_dead_letters", "dlq_retry_interval", "high"),
    "purge-dead-letters": ("schedules.purge_dead_letters", "dlq_purge_interval", "low"),
}

#: the entry that fires the application schedules (`SLUICE_SCHEDULES_FILE`) in beat, through
#: the gate (`schedules.trigger`); it moves itself to the next tick of any of them
APP_ENTRY = "app-schedules"
APP_TASK = "schedules.app_schedules"
#: its interval when it cannot move itself (Redis briefly away): beat looks again then
APP_CHECK_S = 1.0


def build_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """celery beat's `beat_schedule`: the three Sluice jobs, and the application schedules'
    entry when a schedules file is set (read and checked by beat itself, when it starts)."""
    schedule: dict[str, dict[str, Any]] = {
        name: {"task": task, "schedule": float(getattr(settings, field)),
               "options": {"queue": queue, "expires": float(getattr(settings, field))}}
        for name, (task, field, queue) in JOBS.items()
    }
    if settings.schedules_file is not None:
        schedule[APP_ENTRY] = {"task": APP_TASK, "schedule": APP_CHECK_S, "options": {}}
    return schedule
