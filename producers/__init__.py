"""The producer API and the queue-pressure gate.

    from producers import submit, submit_many, Priority, Rejected
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

from producers.api import Producer, Receipt
from producers.pressure import Decision, LevelState, Thresholds, decide, level_for
from producers.workflow import Step, WorkflowReceipt, submit_workflow
from sluice.errors import InvalidOption, InvalidPayload, OutcomeUnknown, Rejected, UnknownTask
from sluice.priorities import PressureLevel, Priority

__all__ = [
    "submit", "submit_many", "submit_async", "submit_workflow", "Step", "WorkflowReceipt",
    "default_producer", "reset_default_producer",
    "Producer", "Receipt", "Priority", "PressureLevel", "Rejected", "InvalidPayload",
    "InvalidOption", "OutcomeUnknown",
    "UnknownTask", "Decision", "LevelState", "Thresholds", "decide", "level_for",
]

_default: Producer | None = None
_lock = threading.Lock()


def default_producer() -> Producer:
    """The process-wide producer, built from the settings on first use."""
    global _default
    with _lock:
        if _default is None:
            from sluice.app import app
            from sluice.connections import redis_client
            from sluice.settings import get_settings

            _default = Producer(app, get_settings(), redis_client())
        return _default


def reset_default_producer() -> None:
    """Stop and forget the process-wide producer (tests; after settings changed)."""
    global _default
    with _lock:
        if _default is not None:
            _default.close()
        _default = None


def submit(task_name: str, payload: Any, *, priority: Priority | str | None = None,
           idempotency_key: str | None = None, countdown: float | None = None,
           deadline: float | None = None, tenant: str | None = None,
           headers: Mapping[str, Any] | None = None) -> Receipt:
    """Submit one job through the gate. See `Producer.submit`."""
    return default_producer().submit(task_name, payload, priority=priority,
                                      idempotency_key=idempotency_key, countdown=countdown,
                                      deadline=deadline, tenant=tenant, headers=headers)


def submit_many(task_name: str, payloads: Sequence[Any], *,
                priority: Priority | str | None = None,
                deadline: float | None = None,
                tenant: str | None = None) -> list[Receipt | Rejected]:
    """Submit a batch in one pipeline. See `Producer.submit_many`."""
    return default_producer().submit_many(task_name, payloads, priority=priority,
                                          deadline=deadline, tenant=tenant)


async def submit_async(task_name: str, payload: Any, *, priority: Priority | str | None = None,
                       idempotency_key: str | None = None, countdown: float | None = None,
                       deadline: float | None = None, tenant: str | None = None,
                       headers: Mapping[str, Any] | None = None) -> Receipt:
    """`submit` for asyncio applications. See `Producer.submit_async`."""
    return await default_producer().submit_async(
        task_name, payload, priority=priority, idempotency_key=idempotency_key,
        countdown=countdown, deadline=deadline, tenant=tenant, headers=headers)
