"""What `sluice schedule ls` shows: each job's runs, read from what the jobs recorded."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from schedules.beat import JOBS
from sluice import keys
from sluice.connections import redis_client, texts
from sluice.settings import get_settings

__all__ = ["schedule_rows"]


def _iso(epoch: float | None) -> str | None:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat() if epoch else None


def schedule_rows(now: float) -> list[dict[str, Any]]:
    """One row per job: interval, runs, last run, next run (last run + interval), outcome."""
    settings, client = get_settings(), redis_client()
    recorded = texts(client.hgetall(keys.SCHEDULE_RUNS))
    rows = []
    for name, (task, field, _queue) in JOBS.items():
        interval = float(getattr(settings, field))
        last = json.loads(recorded.get(f"{name}:last", "null") or "null")
        last_at = last["at"] if last else None
        rows.append({
            "job": name, "task": task, "interval_s": interval,
            "runs": int(recorded.get(f"{name}:runs", 0)),
            "last_run": _iso(last_at), "next_run": _iso(last_at + interval) if last_at else None,
            "last_outcome": last["outcome"] if last else None,
        })
    return rows
