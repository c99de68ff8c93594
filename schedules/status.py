"""What `sluice schedule ls` shows: each job's runs, read from what the jobs recorded, and
each application schedule (`SLUICE_SCHEDULES_FILE`) with its firings."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from schedules.beat import JOBS
from schedules.definitions import AppSchedule, read_schedules
from schedules.firing import schedule_state
from sluice import keys
from sluice.connections import redis_client, texts
from sluice.settings import get_settings

__all__ = ["schedule_rows", "app_schedule_rows"]


def _iso(epoch: float | None) -> str | None:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat() if epoch else None


def schedule_rows(now: float) -> list[dict[str, Any]]:
    """One row per job: interval, runs, last run, next run (last run + interval), outcome;
    then one per application schedule (`app_schedule_rows`), when a file is set."""
    settings, client = get_settings(), redis_client()
    recorded = texts(client.hgetall(keys.SCHEDULE_RUNS))
    rows = []
    for name, (task, field, _queue) in JOBS.items():
        interval = float(getattr(settings, field))
        last = json.loads(recorded.get(f"{name}:last", "null") or "null")
        last_at = last["at"] if last else None
        rows.append({
            "job": name, "kind": "maintenance", "task": task, "interval_s": interval,
            "schedule": f"every {interval:g}s",
            "runs": int(recorded.get(f"{name}:runs", 0)),
            "last_run": _iso(last_at), "next_run": _iso(last_at + interval) if last_at else None,
            "last_outcome": last["outcome"] if last else None,
        })
    if settings.schedules_file is not None:
        schedules, _problems = read_schedules(settings.schedules_file)
        rows += app_schedule_rows(schedules, now)
    return rows


def app_schedule_rows(schedules: list[AppSchedule], now: float) -> list[dict[str, Any]]:
    """One row per application schedule: its timing, next tick, firings accepted (`runs`),
    shed, duplicate and skipped (missed while beat was away), and the last firing."""
    client = redis_client()
    rows = []
    for schedule in schedules:
        state = schedule_state(client, schedule.name)
        last = state["last"]
        rows.append({
            "job": schedule.name, "kind": schedule.kind, "task": schedule.describe(),
            "interval_s": schedule.timing.every_s, "schedule": schedule.timing.describe(),
            "runs": state["runs"], "sheds": state["sheds"], "duplicates": state["duplicates"],
            "skipped": state["skipped"], "last_run": _iso(last["at"]) if last else None,
            "next_run": _iso(schedule.timing.next(now)),
            "last_outcome": last["outcome"] if last else None,
            "last_tick": last["tick"] if last else None,
        })
    return rows
