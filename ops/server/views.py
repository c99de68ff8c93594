"""What the API returns and the console shows about the queues, the tasks, the workers and
the schedules: the same data as `sluice pressure`, `tasks`, `doctor` and `schedule ls`, read
from the same functions. The pressure comes from the server's own monitor, which samples in
the background, so a page polling it every second costs Redis one HGETALL (the counters)."""

from __future__ import annotations

import math
import time
from typing import Any

import redis
from celery import Celery
from pydantic import BaseModel

from producers.monitor import Snapshot
from sluice import keys
from sluice.connections import texts
from sluice.priorities import QUEUES, Priority
from sluice.settings import Settings

__all__ = ["pressure_view", "tenant_rows", "submission_counts", "task_models", "task_rows", "worker_rows",
           "schedule_rows", "finite"]


def finite(value: float | None, digits: int = 3) -> float | None:
    """A float JSON can carry: None for unknown or infinite (a fleet starting no jobs)."""
    if value is None or not math.isfinite(value):
        return None
    return round(value, digits)


def pressure_view(snap: Snapshot, settings: Settings,
                  submissions: dict[str, dict[str, int]]) -> dict[str, Any]:
    """The level, depth and oldest job's age per queue, drain rate, predicted waits,
    thresholds, kill switches and submission counters (for accept / shed rates)."""
    return {
        "level": snap.level.name, "depth": snap.depth, "at": snap.at,
        "depths": {q: snap.depths.get(q, 0) for q in QUEUES},
        "oldest_age_s": {q: finite(snap.oldest.get(q, 0.0)) for q in QUEUES},
        "drain_rate": finite(snap.drain.rate),
        "predicted_wait_s": {p.name: finite(snap.wait_for(p)) for p in Priority},
        "thresholds": {"warning": settings.pressure_warning,
                       "critical": settings.pressure_critical, "shed": settings.pressure_shed},
        "killswitches": dict(snap.killswitches), "submissions": submissions,
        "tenants": tenant_rows(snap),
    }


def tenant_rows(snap: Snapshot) -> dict[str, list[dict[str, Any]]]:
    """Per priority, the busiest tenants of the last seconds: jobs/s offered, accepted, shed."""
    from producers.fairness import TOP_TENANTS, busiest

    return {priority: [{"tenant": t, "offered_per_s": round(offered, 2),
                        "accepted_per_s": round(accepted, 2),
                        "shed_per_s": round(max(0.0, offered - accepted), 2)}
                       for t, offered, accepted in busiest(rates, TOP_TENANTS)]
            for priority, rates in snap.tenants.items()}


def submission_counts(client: redis.Redis) -> dict[str, dict[str, int]]:
    """Every producer's submissions so far: priority -> outcome -> count."""
    out: dict[str, dict[str, int]] = {p.name: {} for p in Priority}
    for field, count in texts(client.hgetall(keys.SUBMISSIONS)).items():
        priority, outcome = keys.parse_submission_field(field)
        out.setdefault(priority, {})[outcome] = int(count)
    return out


def task_models(app: Celery) -> dict[str, type[BaseModel]]:
    """Every registered Sluice task -> its payload model (what the OpenAPI schema shows)."""
    app.loader.import_default_modules()
    return {name: task.payload_model for name, task in sorted(app.tasks.items())
            if getattr(task, "payload_model", None) is not None}


def task_rows(app: Celery) -> list[dict[str, Any]]:
    """What `sluice tasks --json` lists: name, default priority, queue, payload schema."""
    rows = []
    for name, model in task_models(app).items():
        task = app.tasks[name]
        rows.append({"name": name, "priority": task.sluice_priority.name,
                     "queue": task.sluice_priority.queue,
                     "max_wait_s": getattr(task, "max_wait", None),
                     "schema": model.model_json_schema()})
    return rows


def worker_rows(client: redis.Redis, now: float | None = None) -> list[dict[str, Any]]:
    """Each worker `sluice doctor` knows: its heartbeat's age (None: dead, its jobs put back)
    and how many messages it holds, with its readiness state."""
    from delivery.recovery import holders
    from ops.doctor import worker_state

    now = time.time() if now is None else now
    return [{"worker": name, "alive": seen is not None,
             "heartbeat_age_s": None if seen is None else round(now - seen, 1),
             "holds": held, "state": worker_state(name)}
            for name, (seen, held) in holders(client).items()]


def schedule_rows(now: float | None = None) -> list[dict[str, Any]]:
    """What `sluice schedule ls` shows: each beat job's interval, runs, last and next run."""
    from schedules.status import schedule_rows as rows

    return rows(time.time() if now is None else now)
