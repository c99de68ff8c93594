"""The beat schedule, built from settings (pure: no Celery, no I/O)."""

from __future__ import annotations

from typing import Any

from sluice.settings import Settings

__all__ = ["build_schedule", "JOBS"]

#: schedule entry name -> (task name, settings field with its interval, queue)
JOBS: dict[str, tuple[str, str, str]] = {
    "reconcile": ("schedules.reconcile", "reconcile_interval", "critical"),
    "retry-dead-letters": ("schedules.retry_dead_letters", "dlq_retry_interval", "high"),
    "purge-dead-letters": ("schedules.purge_dead_letters", "dlq_purge_interval", "low"),
}


def build_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """celery beat's `beat_schedule` for the three Sluice jobs."""
    return {
        name: {"task": task, "schedule": float(getattr(settings, field)),
               "options": {"queue": queue, "expires": float(getattr(settings, field))}}
        for name, (task, field, queue) in JOBS.items()
    }
