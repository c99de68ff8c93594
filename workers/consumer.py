"""The worker's consumer: messages Celery cannot run become dead letters instead of vanishing.

Stock Celery logs and drops a message it cannot decode (pickle, unknown content type), one
that is not a task message, or one naming an unknown task. Each of those is now recorded in
the dead-letter store with its reason and raw body (the builder is the transport's, so a
bad message looks the same whichever layer caught it), then acked as before, so the worker
keeps serving and never crash-loops on it. A message that carries a task id leaves the
ledger too: it will never start, so the reconcile job must not send it again.

The consumer also runs `Heartbeat`, which keeps the readiness key alive while its event
loop turns.
"""

from __future__ import annotations

import time
from typing import Any

from celery import bootsteps
from celery.worker.consumer import Consumer

from delivery.transport import bad_message_record, set_aside, use_sink
from dlq.recorder import get_recorder
from sluice.settings import get_settings
from workers.hooks import HookEvent, TaskDetail, WorkerDetail, emit
from workers.policy import MALFORMED, UNKNOWN_TASK

__all__ = ["SluiceConsumer", "record_bad_message", "Heartbeat"]

# a malformed item the transport sets aside is stored at once, like any other dead letter
use_sink(lambda record: get_recorder().record(record))


def record_bad_message(message: Any, reason: str, exc: BaseException | None) -> None:
    """Dead-letter a message the worker cannot execute (never raises)."""
    headers = getattr(message, "headers", None)
    headers = headers if isinstance(headers, dict) else {}
    info = getattr(message, "delivery_info", None) or {}
    record = bad_message_record(
        str(info.get("routing_key") or "unknown"), getattr(message, "body", b""),
        str(exc) if exc else "not a task message", reason=reason,
        exc_type=type(exc).__name__ if exc else "MalformedMessage",
        task_id=str(headers["id"]) if headers.get("id") else None,
        task_name=str(headers["task"]) if headers.get("task") else None,
        content_type=getattr(message, "content_type", None))
    set_aside(record)


class SluiceConsumer(Consumer):
    """Celery's consumer with dead-lettering of undecodable and unknown messages."""

    class Blueprint(Consumer.Blueprint):
        """Celery's consumer steps, plus the readiness heartbeat."""

        default_steps = [*Consumer.Blueprint.default_steps, "workers.consumer:Heartbeat"]

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        record_bad_message(message, MALFORMED, exc)
        super().on_decode_error(message, exc)

    def on_unknown_message(self, body: Any, message: Any) -> None:
        record_bad_message(message, MALFORMED, None)
        super().on_unknown_message(body, message)

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        record_bad_message(message, UNKNOWN_TASK, exc)
        headers = getattr(message, "headers", None) or {}
        if isinstance(headers, dict) and headers.get("id"):  # it will never start
            emit(HookEvent.UNKNOWN, TaskDetail(HookEvent.UNKNOWN, str(headers["id"]),
                                               str(headers.get("task") or "?"), at=time.time()))
        super().on_unknown_task(body, message, exc)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        record_bad_message(message, MALFORMED, exc)
        super().on_invalid_task(body, message, exc)


class Heartbeat(bootsteps.StartStopStep):
    """Renews the readiness key every `SLUICE_WORKER_HEARTBEAT_INTERVAL` on the worker's own
    timer, so the key expires `SLUICE_WORKER_HEARTBEAT_TTL` after the worker dies (or its event
    loop stops turning) and `sluice doctor --worker` says `unknown`. A consumer step, like
    Celery's own event heartbeat: started on every (re)connect, stopped before the next."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        self.tref: Any = None
        super().__init__(c, **kwargs)

    def start(self, c: Any) -> None:
        def beat() -> None:
            emit(HookEvent.HEARTBEAT, WorkerDetail(HookEvent.HEARTBEAT, c.hostname,
                                                   time.time()))

        beat()
        self.tref = c.timer.call_repeatedly(get_settings().worker_heartbeat_interval, beat)

    def stop(self, c: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None

    shutdown = stop
