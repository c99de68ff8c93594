"""The worker's consumer: messages Celery cannot run become dead letters instead of vanishing.

Stock Celery logs and drops a message it cannot decode (pickle, unknown content type), one
that is not a task message, or one naming an unknown task. Each of those is now recorded in
the dead-letter store with its reason and raw body, then acked as before, so the worker keeps
serving and never crash-loops on it.
"""

from __future__ import annotations

import base64
import logging
import uuid
from typing import Any

from celery.worker.consumer import Consumer

from dlq.recorder import get_recorder
from sluice.records import MALFORMED_TASK, DeadLetterRecord
from workers.policy import MALFORMED, UNKNOWN_TASK

__all__ = ["SluiceConsumer", "record_bad_message"]

log = logging.getLogger("sluice.worker")


def _raw_body(message: Any) -> str:
    body = getattr(message, "body", b"")
    if isinstance(body, bytes):
        try:
            return body.decode("utf-8")[:65_536]
        except UnicodeDecodeError:
            return "base64:" + base64.b64encode(body[:49_152]).decode()
    return str(body)[:65_536]


def record_bad_message(message: Any, reason: str, exc: BaseException | None) -> None:
    """Dead-letter a message the worker cannot execute (never raises)."""
    headers = getattr(message, "headers", None) or {}
    info = getattr(message, "delivery_info", None) or {}
    queue = str(info.get("routing_key") or "unknown")
    record = DeadLetterRecord(
        task_id=str(headers.get("id") or f"malformed-{uuid.uuid4()}"),
        task_name=str(headers.get("task") or MALFORMED_TASK), queue=queue,
        priority=queue.upper(),
        payload={"raw": _raw_body(message),
                 "content_type": getattr(message, "content_type", None)},
        exc_type=type(exc).__name__ if exc else "MalformedMessage",
        exc_message=str(exc) if exc else "not a task message", reason=reason, retryable=False)
    try:
        get_recorder().record(record)
    except Exception:  # the spool failed as well: log loudly, keep the worker alive
        log.exception("could not record bad message %s", record.task_id)


class SluiceConsumer(Consumer):
    """Celery's consumer with dead-lettering of undecodable and unknown messages."""

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        record_bad_message(message, MALFORMED, exc)
        super().on_decode_error(message, exc)

    def on_unknown_message(self, body: Any, message: Any) -> None:
        record_bad_message(message, MALFORMED, None)
        super().on_unknown_message(body, message)

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        record_bad_message(message, UNKNOWN_TASK, exc)
        super().on_unknown_task(body, message, exc)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        record_bad_message(message, MALFORMED, exc)
        super().on_invalid_task(body, message, exc)
