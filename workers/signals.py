"""The one adapter between Celery signals and our hook list (`workers.hooks`).

Nothing else in Sluice calls `signal.connect`.
"""

from __future__ import annotations

import time
from typing import Any

from celery import signals

from workers.hooks import HookEvent, ResultDetail, TaskDetail, WorkerDetail, emit

__all__: list[str] = []


def _task_detail(event: HookEvent, task: Any, task_id: str | None) -> TaskDetail:
    request = getattr(task, "request", None)
    return TaskDetail(event, task_id or getattr(request, "id", "") or "",
                      getattr(task, "name", "?"),
                      getattr(request, "sluice_priority", None),
                      getattr(request, "sluice_submitted_at", None), time.time())


@signals.task_prerun.connect
def _on_prerun(sender: Any = None, task_id: str | None = None, task: Any = None,
               **_: Any) -> None:
    emit(HookEvent.STARTED, _task_detail(HookEvent.STARTED, task, task_id))


@signals.task_success.connect
def _on_success(sender: Any = None, result: Any = None, **_: Any) -> None:
    request = getattr(sender, "request", None)
    emit(HookEvent.SUCCEEDED, ResultDetail(HookEvent.SUCCEEDED, getattr(request, "id", "") or "",
                                           getattr(sender, "name", "?"), result, request,
                                           time.time()))


@signals.task_retry.connect
def _on_retry(sender: Any = None, request: Any = None, **_: Any) -> None:
    emit(HookEvent.RETRIED, TaskDetail(HookEvent.RETRIED, getattr(request, "id", ""),
                                       getattr(sender, "name", "?"), at=time.time()))


@signals.task_revoked.connect
def _on_revoked(sender: Any = None, request: Any = None, expired: bool = False,
                **_: Any) -> None:
    event = HookEvent.EXPIRED if expired else HookEvent.REVOKED
    name = getattr(sender, "name", None) or getattr(request, "name", None) or "?"
    emit(event, TaskDetail(event, getattr(request, "id", None) or "", name, at=time.time()))


@signals.task_rejected.connect
def _on_rejected(sender: Any = None, message: Any = None, **_: Any) -> None:
    """Celery refused the message (not a task message, or an invalid one)."""
    headers = getattr(message, "headers", None)
    if isinstance(headers, dict) and headers.get("id"):
        emit(HookEvent.REJECTED, TaskDetail(HookEvent.REJECTED, str(headers["id"]),
                                            str(headers.get("task") or "?"), at=time.time()))


@signals.worker_ready.connect
def _on_ready(sender: Any = None, **_: Any) -> None:
    emit(HookEvent.READY, WorkerDetail(HookEvent.READY, getattr(sender, "hostname", str(sender)),
                                       time.time()))


@signals.worker_shutting_down.connect
def _on_shutting_down(sender: Any = None, **_: Any) -> None:
    emit(HookEvent.SHUTTING_DOWN, WorkerDetail(HookEvent.SHUTTING_DOWN, str(sender),
                                               time.time()))


@signals.worker_shutdown.connect
def _on_shutdown(sender: Any = None, **_: Any) -> None:
    emit(HookEvent.STOPPED, WorkerDetail(HookEvent.STOPPED,
                                         getattr(sender, "hostname", str(sender)), time.time()))
