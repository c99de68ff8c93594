"""The scheduled jobs: reconcile, retry-dead-letters, purge-dead-letters.

Each is a Celery task on a Sluice queue, idempotent and safe to run twice at once. Each
records its own runs (count, last run, outcome) in Redis, which is what `sluice schedule ls`
shows: proof that beat fires, read from what actually ran. `now` may be passed (ISO 8601)
so that tests step the clock instead of sleeping.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from delivery import ledger
from dlq.drain import drain_spool
from dlq.models import Status
from dlq.recorder import get_recorder
from dlq.replay import replay_one
from dlq.store import DeadLetterStore, as_utc
from producers import default_producer
from schedules.retry import RetryAction, next_retry
from sluice import keys
from sluice.app import app
from sluice.connections import hash_fields, redis_client
from sluice.errors import SluiceError
from sluice.priorities import Priority
from sluice.settings import get_settings

__all__ = ["reconcile", "retry_dead_letters", "purge_dead_letters", "run_reconcile",
           "run_retry", "run_purge", "stuck_report"]

log = logging.getLogger("sluice.schedules")


def _now(now: str | None) -> dt.datetime:
    return dt.datetime.fromisoformat(now) if now else dt.datetime.now(dt.UTC)


def _store() -> DeadLetterStore:
    return get_recorder().store


def record_run(name: str, outcome: dict[str, Any]) -> None:
    """Keep `runs`, `last_run` and `last_outcome` of a job for `sluice schedule ls`."""
    client = redis_client()
    pipe = client.pipeline()
    pipe.hincrby(keys.SCHEDULE_RUNS, f"{name}:runs", 1)
    pipe.hset(keys.SCHEDULE_RUNS, f"{name}:last", json.dumps(
        {"at": time.time(), "outcome": outcome}, default=str))
    pipe.execute()


def _job(name: str, body: Callable[[dt.datetime], dict[str, Any]]) -> Callable[..., Any]:
    def run(now: str | None = None) -> dict[str, Any]:
        try:
            outcome = body(_now(now))
        except Exception as exc:
            record_run(name, {"error": f"{type(exc).__name__}: {exc}"})
            raise
        record_run(name, outcome)
        return outcome
    run.__name__ = run.__qualname__ = name.replace("-", "_")
    return run


def run_reconcile(now: dt.datetime) -> dict[str, Any]:
    """Drain the dead-letter spools, flush the CRITICAL outbox, re-send jobs lost in flight,
    report stuck jobs.

    Each step runs on its own: one that fails is logged and named in `errors`, and the next
    still runs. A bad record cannot stop them (the store quarantines it), nor can a database
    outage stop the ledger recovery, which needs only Redis.
    """
    settings, client = get_settings(), redis_client()
    errors: dict[str, str] = {}

    def step(name: str, body: Callable[[], Any]) -> Any:
        try:
            return body()
        except Exception as exc:
            log.exception("reconcile: %s failed, the other steps still run", name)
            first_line = (str(exc).strip().splitlines() or [""])[0]
            errors[name] = f"{type(exc).__name__}: {first_line}"[:500]
            return None

    drained = step("drain", lambda: drain_spool(_store(), client, settings.spool_path))
    outcome: dict[str, Any] = {
        "drained": drained.stored if drained else None,
        "quarantined": drained.quarantined if drained else None,
        "outbox_sent": step("outbox", lambda: default_producer().flush_outbox()),
        "lost_resent": step("ledger", lambda: ledger.recover_lost(
            client, now.timestamp(), settings.ledger_grace_seconds,
            settings.ledger_confirm_seconds)),
    }
    stuck = step("stuck", lambda: stuck_report(now.timestamp())) or {}
    outcome.update(stuck)
    if stuck.get("over_time_limit") or stuck.get("over_visibility"):
        log.warning("stuck jobs: %d past their time limit, %d reserved past the visibility "
                    "timeout", stuck["over_time_limit"], stuck["over_visibility"])
    if drained and drained.quarantined:
        log.error("ALERT %d spooled dead letter(s) refused by the store and quarantined "
                  "(table dead_letter_quarantine)", drained.quarantined)
    if errors:
        outcome["errors"] = errors
    return outcome


def stuck_report(now: float) -> dict[str, int]:
    """Jobs delivered to a worker and not acked for longer than the time limit / visibility
    timeout (from kombu's unacked index); kept in Redis for doctor and metrics."""
    settings, client = get_settings(), redis_client()
    over_limit = client.zcount(keys.KOMBU_UNACKED_INDEX, "-inf", now - settings.task_time_limit)
    over_vis = client.zcount(keys.KOMBU_UNACKED_INDEX, "-inf", now - settings.visibility_timeout)
    report = {"over_time_limit": int(over_limit), "over_visibility": int(over_vis)}
    client.hset(keys.STUCK, mapping=hash_fields(report))
    return report


def run_retry(now: dt.datetime) -> dict[str, Any]:
    """Replay due retryable dead letters through the gate; exhaust those past the horizon."""
    settings, store = get_settings(), _store()
    counts = {"replayed": 0, "rejected": 0, "exhausted": 0, "errors": 0}
    for row in store.due_for_retry(now):
        decision = next_retry(as_utc(row.first_failed_at), as_utc(row.next_retry_at)
                              if row.next_retry_at else None, row.replay_count, now,
                              settings.dlq_retry_base, settings.dlq_retry_horizon)
        if decision.action is RetryAction.EXHAUST:
            store.set_status([row.id], Status.EXHAUSTED, only_from=(Status.PENDING,))
            log.error("ALERT dead letter %s (%s) exhausted: still failing %s after its first "
                      "failure", row.id, row.task_name, now - as_utc(row.first_failed_at))
            counts["exhausted"] += 1
        elif decision.action is RetryAction.REPLAY:
            try:
                outcome = replay_one(store, default_producer(), row.id, decision.next_at)
                counts[outcome.outcome] += 1
            except SluiceError as exc:
                log.warning("retry of dead letter %s failed: %s", row.id, exc)
                counts["errors"] += 1
    return counts


def run_purge(now: dt.datetime) -> dict[str, Any]:
    """Delete replayed/discarded rows older than the retention."""
    days = get_settings().dlq_retention_days
    return {"purged": _store().purge(dt.timedelta(days=days), now)}


_OPTIONS: dict[str, Any] = {"acks_late": True, "ignore_result": True, "shared": False}
reconcile = app.task(name="schedules.reconcile", sluice_priority=Priority.CRITICAL,
                     **_OPTIONS)(_job("reconcile", run_reconcile))
retry_dead_letters = app.task(name="schedules.retry_dead_letters", sluice_priority=Priority.HIGH,
                              **_OPTIONS)(_job("retry-dead-letters", run_retry))
purge_dead_letters = app.task(name="schedules.purge_dead_letters", sluice_priority=Priority.LOW,
                              **_OPTIONS)(_job("purge-dead-letters", run_purge))

# the application schedules' beat entry (`SLUICE_SCHEDULES_FILE`): registered with the jobs
from schedules import trigger as _trigger  # noqa: E402,F401
