"""Our own hook list: what happens around tasks and worker life, as plain subscribers.

`workers.signals` is the only module that connects to Celery signals; it turns each into a
frozen detail value and calls `emit`. Subscribers here do the Redis bookkeeping.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from producers import ledger
from sluice import keys
from sluice.connections import redis_client
from sluice.settings import get_settings

__all__ = ["TaskDetail", "WorkerDetail", "subscribe", "emit", "HOOKS"]

log = logging.getLogger("sluice.worker")


@dataclass(frozen=True, slots=True)
class TaskDetail:
    """A task event: `started`, `retried`, `expired`."""

    event: str
    task_id: str
    task_name: str
    priority: str | None = None
    submitted_at: float | None = None
    at: float = 0.0


@dataclass(frozen=True, slots=True)
class WorkerDetail:
    """A worker event: `ready`, `shutting_down`, `stopped`."""

    event: str
    hostname: str
    at: float = 0.0


Hook = Callable[[Any], None]
HOOKS: dict[str, list[Hook]] = defaultdict(list)


def subscribe(event: str) -> Callable[[Hook], Hook]:
    """Decorator: call the function on every `event`."""
    def register(fn: Hook) -> Hook:
        HOOKS[event].append(fn)
        return fn
    return register


def emit(event: str, detail: Any) -> None:
    """Call each subscriber; a failing subscriber is logged, never raised into Celery."""
    for fn in HOOKS.get(event, ()):
        try:
            fn(detail)
        except redis.RedisError as exc:
            log.warning("hook %s for %s skipped: %s", fn.__name__, event, exc)
        except Exception:
            log.exception("hook %s for %s failed", fn.__name__, event)


@subscribe("retried")
def count_retry(detail: TaskDetail) -> None:
    redis_client().hincrby(keys.RETRIES, detail.task_name, 1)


@subscribe("expired")
def count_expired(detail: TaskDetail) -> None:
    log.info("%s %s expired before it started: dropped, not dead-lettered",
             detail.task_name, detail.task_id)
    redis_client().hincrby(keys.EXPIRED, detail.task_name, 1)
    ledger.forget(redis_client(), [detail.task_id])


@subscribe("started")
def leave_ledger(detail: TaskDetail) -> None:
    """Started: kombu holds the job in its unacked set now, the ledger can let go."""
    ledger.forget(redis_client(), [detail.task_id])


@subscribe("started")
def record_wait(detail: TaskDetail) -> None:
    """With SLUICE_RECORD_WAITS on (demo, benchmarks), keep submit->start waits per priority."""
    if not get_settings().record_waits or detail.submitted_at is None:
        return
    wait = max(0.0, detail.at - float(detail.submitted_at))
    redis_client().rpush(keys.waits(detail.priority or "UNKNOWN"), f"{detail.at}:{wait:.6f}")


@subscribe("ready")
@subscribe("shutting_down")
def publish_state(detail: WorkerDetail) -> None:
    """Readiness for `sluice doctor --worker`: `ready` or `shutting down`."""
    state = detail.event.replace("_", " ")
    redis_client().set(keys.worker_state(detail.hostname), state, ex=3600)


@subscribe("stopped")
def clear_state(detail: WorkerDetail) -> None:
    redis_client().delete(keys.worker_state(detail.hostname))


