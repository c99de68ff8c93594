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
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

from producers import ledger
from sluice import keys
from sluice.connections import redis_client
from sluice.settings import get_settings

__all__ = ["TaskDetail", "WorkerDetail", "subscribe", "emit", "HOOKS", "forget",
           "HEARTBEAT_INTERVAL_S", "HEARTBEAT_TTL_S"]

log = logging.getLogger("sluice.worker")

#: how often a live worker's main process renews its readiness key (`workers.lifecycle`),
#: and how long the key outlives the last renewal: a dead worker reads `unknown` by then
HEARTBEAT_INTERVAL_S = 5.0
HEARTBEAT_TTL_S = 15


@dataclass(frozen=True, slots=True)
class TaskDetail:
    """A task event: `started`, `retried`; or one of a job that will never start:
    `expired`, `revoked`, `rejected` (Celery refused the message), `unknown` (no such task)."""

    event: str
    task_id: str
    task_name: str
    priority: str | None = None
    submitted_at: float | None = None
    at: float = 0.0


@dataclass(frozen=True, slots=True)
class WorkerDetail:
    """A worker event: `ready`, `heartbeat`, `shutting_down`, `stopped`."""

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


@retry(retry=retry_if_exception_type(redis.RedisError), stop=stop_after_attempt(4),
       wait=wait_exponential(multiplier=0.1, max=1.0), reraise=True)
def forget(task_ids: list[str]) -> None:
    """Take jobs out of the ledger, retrying a few times: an entry left behind by a failed
    call is re-sent by the reconcile job, and so runs again (or runs after all, if it had
    been dropped on purpose)."""
    ledger.forget(redis_client(), task_ids)


@subscribe("expired")
def count_expired(detail: TaskDetail) -> None:
    log.info("%s %s expired before it started: dropped, not dead-lettered",
             detail.task_name, detail.task_id)
    redis_client().hincrby(keys.EXPIRED, detail.task_name, 1)


@subscribe("started")
@subscribe("expired")
@subscribe("revoked")
@subscribe("rejected")
@subscribe("unknown")
def leave_ledger(detail: TaskDetail) -> None:
    """Started: kombu holds the job in its unacked set now, the ledger can let go. Dropped
    before its start (expired, revoked, refused): it must not be sent again."""
    if not detail.task_id:
        return
    try:
        forget([detail.task_id])
    except redis.RedisError:
        log.exception("%s %s (%s) could not leave the ledger: the reconcile job may send "
                      "it again", detail.task_name, detail.task_id, detail.event)


@subscribe("started")
def record_wait(detail: TaskDetail) -> None:
    """With SLUICE_RECORD_WAITS on (demo, benchmarks), keep submit->start waits per priority."""
    if not get_settings().record_waits or detail.submitted_at is None:
        return
    wait = max(0.0, detail.at - float(detail.submitted_at))
    redis_client().rpush(keys.waits(detail.priority or "UNKNOWN"), f"{detail.at}:{wait:.6f}")


#: the state each worker of this process last announced (the heartbeat renews it)
_STATES: dict[str, str] = {}


@subscribe("ready")
@subscribe("shutting_down")
def publish_state(detail: WorkerDetail) -> None:
    """Readiness for `sluice doctor --worker`: `ready` or `shutting down`, for
    `HEARTBEAT_TTL_S` unless the heartbeat renews it."""
    _STATES[detail.hostname] = detail.event.replace("_", " ")
    renew_state(detail)


@subscribe("heartbeat")
def renew_state(detail: WorkerDetail) -> None:
    """The worker's event loop is alive: keep its announced state (none before `ready`)."""
    state = _STATES.get(detail.hostname)
    if state is not None:
        redis_client().set(keys.worker_state(detail.hostname), state, ex=HEARTBEAT_TTL_S)


@subscribe("stopped")
def clear_state(detail: WorkerDetail) -> None:
    _STATES.pop(detail.hostname, None)
    redis_client().delete(keys.worker_state(detail.hostname))


