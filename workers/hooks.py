"""Our own hook list: what happens around tasks and worker life, as plain subscribers.

`workers.signals` is the only module that connects to Celery signals; it turns each into a
frozen detail value and calls `emit`. Subscribers here do the Redis bookkeeping.
"""

from __future__ import annotations

import enum
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

from delivery import ledger, recovery
from sluice import keys
from sluice.connections import redis_client
from sluice.settings import get_settings

__all__ = ["HookEvent", "TaskDetail", "ResultDetail", "WorkerDetail", "subscribe", "emit",
           "HOOKS", "forget", "release"]

log = logging.getLogger("sluice.worker")


class HookEvent(enum.StrEnum):
    """What can happen around a job or a worker (subscribe to one of these)."""

    STARTED = "started"  #: a job starts running
    SUCCEEDED = "succeeded"  #: a job returned (before its ack): `ResultDetail`
    RETRIED = "retried"  #: a job failed and will be retried
    EXPIRED = "expired"  #: a job was not started by its deadline: dropped
    REVOKED = "revoked"  #: a job was revoked before it started
    REJECTED = "rejected"  #: Celery refused a message (not a task message, invalid)
    UNKNOWN = "unknown"  #: a message names no registered task
    READY = "ready"  #: a worker is consuming
    HEARTBEAT = "heartbeat"  #: a worker's event loop is alive (every heartbeat interval)
    SHUTTING_DOWN = "shutting_down"  #: a worker's drain window begins
    STOPPED = "stopped"  #: a worker stopped


@dataclass(frozen=True, slots=True)
class TaskDetail:
    """A task event: `started`, `retried`; or one of a job that will never start:
    `expired`, `revoked`, `rejected` (Celery refused the message), `unknown` (no such task)."""

    event: HookEvent
    task_id: str
    task_name: str
    priority: str | None = None
    submitted_at: float | None = None
    at: float = 0.0


@dataclass(frozen=True, slots=True)
class ResultDetail:
    """A job that returned (`succeeded`): what it returned, and the request it ran with
    (its message headers are attributes of the request, as `sluice_key`)."""

    event: HookEvent
    task_id: str
    task_name: str
    result: Any
    request: Any
    at: float = 0.0


@dataclass(frozen=True, slots=True)
class WorkerDetail:
    """A worker event: `ready`, `heartbeat`, `shutting_down`, `stopped`."""

    event: HookEvent
    hostname: str
    at: float = 0.0


Hook = Callable[[Any], None]
HOOKS: dict[HookEvent, list[Hook]] = defaultdict(list)


def subscribe(event: HookEvent | str) -> Callable[[Hook], Hook]:
    """Decorator: call the function on every `event`. A name that is no event is refused
    here (a typo would otherwise subscribe to something that never fires)."""
    kind = _event(event)

    def register(fn: Hook) -> Hook:
        HOOKS[kind].append(fn)
        return fn
    return register


def _event(event: HookEvent | str) -> HookEvent:
    try:
        return HookEvent(event)
    except ValueError:
        names = ", ".join(e.value for e in HookEvent)
        raise ValueError(f"no hook event {event!r} (one of {names})") from None


def emit(event: HookEvent | str, detail: Any) -> None:
    """Call each subscriber; a failing subscriber is logged, never raised into Celery."""
    for fn in HOOKS.get(_event(event), ()):
        try:
            fn(detail)
        except redis.RedisError as exc:
            log.warning("hook %s for %s skipped: %s", fn.__name__, event, exc)
        except Exception:
            log.exception("hook %s for %s failed", fn.__name__, event)


@subscribe(HookEvent.RETRIED)
def count_retry(detail: TaskDetail) -> None:
    redis_client().hincrby(keys.RETRIES, detail.task_name, 1)


@retry(retry=retry_if_exception_type(redis.RedisError), stop=stop_after_attempt(4),
       wait=wait_exponential(multiplier=0.1, max=1.0), reraise=True)
def forget(task_ids: list[str]) -> None:
    """Take jobs out of the ledger, retrying a few times: an entry left behind by a failed
    call is re-sent by the reconcile job, and so runs again (or runs after all, if it had
    been dropped on purpose)."""
    ledger.forget(redis_client(), task_ids)


@subscribe(HookEvent.EXPIRED)
def count_expired(detail: TaskDetail) -> None:
    log.info("%s %s expired before it started: dropped, not dead-lettered",
             detail.task_name, detail.task_id)
    redis_client().hincrby(keys.EXPIRED, detail.task_name, 1)


@subscribe(HookEvent.STARTED)
def count_start(detail: TaskDetail) -> None:
    """A job starts: counted for the gate's drain rate. It stays in the ledger until it
    ends: a job whose worker dies is put back on its queue (kombu's unacked set, Sluice's
    recovery), and a worker that dies with that redelivery in flight loses it as surely as
    the first delivery (`make chaos` lost one so, when the ledger let go at the start)."""
    redis_client().incr(keys.STARTED)


@subscribe(HookEvent.SUCCEEDED)
@subscribe(HookEvent.EXPIRED)
@subscribe(HookEvent.REVOKED)
@subscribe(HookEvent.REJECTED)
@subscribe(HookEvent.UNKNOWN)
def leave_ledger(detail: TaskDetail | ResultDetail) -> None:
    """The job ended (before its ack: a worker that dies between the two leaves a job that
    is redelivered, as acks_late means), or was dropped before its start (expired, revoked,
    refused): it must not be sent again."""
    release(detail.task_id, detail.task_name, detail.event.value)


def release(task_id: str, task_name: str, why: str) -> None:
    """Take one job out of the ledger (it `why`: ended, was dropped, was dead-lettered),
    logging a failure: an entry left behind is re-sent by the reconcile job."""
    if not task_id:
        return
    try:
        forget([task_id])
    except redis.RedisError:
        log.exception("%s %s (%s) could not leave the ledger: the reconcile job may send "
                      "it again", task_name, task_id, why)


@subscribe(HookEvent.STARTED)
def record_wait(detail: TaskDetail) -> None:
    """With SLUICE_RECORD_WAITS on (demo, benchmarks), keep submit->start waits per priority."""
    if not get_settings().record_waits or detail.submitted_at is None:
        return
    wait = max(0.0, detail.at - float(detail.submitted_at))
    redis_client().rpush(keys.waits(detail.priority or "UNKNOWN"), f"{detail.at}:{wait:.6f}")


#: the state each worker of this process last announced (the heartbeat renews it)
_STATES: dict[str, str] = {}


@subscribe(HookEvent.READY)
@subscribe(HookEvent.SHUTTING_DOWN)
def publish_state(detail: WorkerDetail) -> None:
    """Readiness for `sluice doctor --worker`: `ready` or `shutting down`, for
    `SLUICE_WORKER_HEARTBEAT_TTL` seconds unless the heartbeat renews it."""
    _STATES[detail.hostname] = detail.event.value.replace("_", " ")
    renew_state(detail)


@subscribe(HookEvent.HEARTBEAT)
def renew_state(detail: WorkerDetail) -> None:
    """The worker's event loop is alive: keep its announced state (none before `ready`)."""
    state = _STATES.get(detail.hostname)
    if state is not None:
        redis_client().set(keys.worker_state(detail.hostname), state,
                           ex=max(1, round(get_settings().worker_heartbeat_ttl)))


@subscribe(HookEvent.HEARTBEAT)
def stay_alive(detail: WorkerDetail) -> None:
    """Renew this worker's liveness, then give back what dead workers held."""
    client, settings = redis_client(), get_settings()
    recovery.announce(client, detail.hostname, settings.worker_heartbeat_ttl)
    recovery.recover_dead(client, me=detail.hostname)


@subscribe(HookEvent.STOPPED)
def clear_state(detail: WorkerDetail) -> None:
    _STATES.pop(detail.hostname, None)
    redis_client().delete(keys.worker_state(detail.hostname), keys.alive(detail.hostname))


# A workflow step that succeeds submits the next one; registers the `workflow.advance` task
# wherever hooks are loaded (every worker). Last: it subscribes to the list above.
from workers import workflow as _workflow  # noqa: E402,F401
