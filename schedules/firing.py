"""Firing application schedules: every tick is a submission through the gate.

`fire_due(schedules, producer, client, now)` looks at the clock once: for each schedule it
plans the ticks due (`timing.plan_ticks`, from the last tick dealt with, kept in Redis) and
submits each with the idempotency key `schedule:<name>:<tick>`, so that two beats, a
failover or a retry of a firing enqueue a tick once. A firing is `accepted`, `shed` (the
gate refused it: counted, not retried: the next tick comes), or `duplicate` (that tick was
already enqueued). Kill switches, deadlines and the ledger apply as to any submission.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import logging
from dataclasses import dataclass
from typing import Any

import redis

from producers.api import Producer
from producers.workflow import submit_workflow
from schedules.definitions import AppSchedule
from schedules.timing import plan_ticks
from sluice import keys
from sluice.connections import texts
from sluice.errors import Rejected, SluiceError

__all__ = ["FireOutcome", "Firing", "fire_due", "fire_one", "tick_key", "tick_iso",
           "schedule_state"]

log = logging.getLogger("sluice.schedules")


class FireOutcome(enum.StrEnum):
    """What one firing of a schedule did."""

    ACCEPTED = "accepted"  #: enqueued (or kept in the CRITICAL outbox while Redis is down)
    SHED = "shed"  #: refused by the gate (pressure, deadline, kill switch, Redis down)
    DUPLICATE = "duplicate"  #: this tick was enqueued already (another beat, a retry)
    FAILED = "failed"  #: any other error (named in `reason`)


@dataclass(frozen=True, slots=True, kw_only=True)
class Firing:
    """One tick of one schedule, fired."""

    schedule: str
    tick: float
    outcome: FireOutcome
    task_id: str | None = None
    reason: str | None = None


def tick_iso(tick: float) -> str:
    """`2026-01-01T06:00:00Z`: a tick as it appears in keys and tables."""
    return dt.datetime.fromtimestamp(tick, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def tick_key(name: str, tick: float) -> str:
    """The idempotency key of one tick of one schedule."""
    return f"schedule:{name}:{tick_iso(tick)}"


def fire_one(schedule: AppSchedule, tick: float, producer: Producer,
             client: redis.Redis) -> Firing:
    """Submit one tick through the gate: the task, or the workflow's first step (the
    workflow id is `<name>@<tick>`)."""
    try:
        if schedule.steps:
            receipt = submit_workflow(schedule.steps, workflow_id=f"{schedule.name}@"
                                      f"{tick_iso(tick)}", producer=producer, client=client,
                                      origin=f"schedule:{schedule.name}").first
        else:
            assert schedule.task is not None
            receipt = producer.submit(schedule.task, schedule.payload,
                                      priority=schedule.priority,
                                      idempotency_key=tick_key(schedule.name, tick))
    except Rejected as rej:
        return Firing(schedule=schedule.name, tick=tick, outcome=FireOutcome.SHED,
                      reason=rej.reason)
    except (SluiceError, redis.RedisError) as exc:
        log.error("schedule %s tick %s not fired: %s: %s", schedule.name, tick_iso(tick),
                  type(exc).__name__, exc)
        return Firing(schedule=schedule.name, tick=tick, outcome=FireOutcome.FAILED,
                      reason=f"{type(exc).__name__}: {exc}")
    outcome = FireOutcome.DUPLICATE if receipt.duplicate else FireOutcome.ACCEPTED
    return Firing(schedule=schedule.name, tick=tick, outcome=outcome, task_id=receipt.task_id)


def fire_due(schedules: list[AppSchedule], producer: Producer, client: redis.Redis,
             now: float) -> list[Firing]:
    """Fire every tick due at `now`, oldest first, and remember what was done."""
    state = texts(client.hgetall(keys.APP_SCHEDULES))
    firings = []
    for schedule in schedules:
        last = state.get(f"{schedule.name}:last_tick")
        plan = plan_ticks(schedule.timing, schedule.missed, float(last) if last else None, now)
        fired = [fire_one(schedule, tick, producer, client) for tick in plan.fire]
        if plan.skipped:
            log.warning("schedule %s: %d tick(s) missed while beat was away, skipped (missed "
                        "= %s)", schedule.name, plan.skipped, schedule.missed.value)
        if fired or plan.skipped or last is None:
            _remember(client, schedule.name, plan.last, plan.skipped, fired, now)
        firings += fired
    return firings


_COUNTERS = {FireOutcome.ACCEPTED: "runs", FireOutcome.SHED: "sheds",
             FireOutcome.DUPLICATE: "duplicates", FireOutcome.FAILED: "failures"}


def _remember(client: redis.Redis, name: str, last_tick: float, skipped: int,
              fired: list[Firing], now: float) -> None:
    pipe = client.pipeline()
    pipe.hset(keys.APP_SCHEDULES, f"{name}:last_tick", repr(last_tick))
    if skipped:
        pipe.hincrby(keys.APP_SCHEDULES, f"{name}:skipped", skipped)
    for firing in fired:
        pipe.hincrby(keys.APP_SCHEDULES, f"{name}:{_COUNTERS[firing.outcome]}", 1)
    if fired:
        last = fired[-1]
        pipe.hset(keys.APP_SCHEDULES, f"{name}:last", json.dumps(
            {"at": now, "tick": tick_iso(last.tick), "outcome": last.outcome.value,
             "task_id": last.task_id, "reason": last.reason}))
    pipe.execute()


def schedule_state(client: redis.Redis, name: str) -> dict[str, Any]:
    """What was recorded of one schedule: counters, last tick, last firing."""
    state = texts(client.hgetall(keys.APP_SCHEDULES))
    prefix = f"{name}:"
    out: dict[str, Any] = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    for counter in (*_COUNTERS.values(), "skipped"):
        out[counter] = int(out.get(counter, 0))
    out["last"] = json.loads(out["last"]) if out.get("last") else None
    return out
