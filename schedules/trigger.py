"""The beat side of application schedules: the `app-schedules` entry's task.

Beat (celery-redbeat, under its lock) calls the task of a due entry through `apply_async`.
This task's `apply_async` publishes nothing: in the beat process, it fires the application
schedules due at that moment through the gate (`firing.fire_due`), then sets its own entry's
interval to reach the next tick of any schedule, so beat wakes when a schedule is due (and
logs a send only then).

The schedules file is read and checked on the first call, that is when beat starts ticking:
a bad file stops beat with a message naming each schedule and its problem (`BeatRefused`).
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from celery import Celery, Task

from producers import default_producer
from schedules.beat import APP_CHECK_S, APP_ENTRY, APP_TASK
from schedules.definitions import AppSchedule, load_schedules
from schedules.firing import fire_due, tick_iso
from sluice.app import app
from sluice.connections import redis_client
from sluice.errors import InvalidSchedules
from sluice.settings import get_settings

__all__ = ["BeatRefused", "Triggered", "trigger", "app_schedules"]

log = logging.getLogger("sluice.schedules")


class BeatRefused(BaseException):  # noqa: N818  (a stop, not an error to handle)
    """Beat must not run: its application schedules are invalid. A BaseException, like
    SystemExit, so that Celery's `except Exception` around each entry cannot swallow it;
    unlike SystemExit, beat exits with a failure status (after releasing its lock)."""


@dataclass(frozen=True, slots=True)
class Triggered:
    """What beat logs of one call (it expects a result with an `id`)."""

    id: str
    fired: int


_loaded: dict[Path, list[AppSchedule]] = {}


def _schedules(celery_app: Celery, path: Path) -> list[AppSchedule]:
    """The schedules of `path`, read and checked once per process."""
    if path not in _loaded:
        try:
            _loaded[path] = load_schedules(path, celery_app)
        except InvalidSchedules as exc:
            log.critical("beat refuses to start: %s", "\n  ".join(
                [f"invalid schedules file {path} (SLUICE_SCHEDULES_FILE):", *exc.problems]))
            sys.excepthook = _without_traceback(sys.excepthook)
            raise BeatRefused(str(exc)) from None
        log.info("application schedules from %s: %s", path,
                 ", ".join(f"{s.name} ({s.timing.describe()})" for s in _loaded[path]) or "none")
    return _loaded[path]


def _without_traceback(hook: Any) -> Any:
    """The reason is logged above: exit with status 1 without a traceback (which beat's
    redirected stderr would log a character a line)."""
    def excepthook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        if not issubclass(kind, BeatRefused):
            hook(kind, value, tb)
    return excepthook


def trigger(celery_app: Celery, now: float) -> Triggered:
    """Fire what is due at `now`; then sleep beat's entry until the next tick."""
    path = get_settings().schedules_file
    if path is None:
        return Triggered(APP_ENTRY, 0)
    schedules = _schedules(celery_app, path)
    firings = fire_due(schedules, default_producer(), redis_client(), now)
    for f in firings:
        log.info("schedule %s tick %s: %s%s", f.schedule, tick_iso(f.tick), f.outcome.value,
                 f" ({f.reason})" if f.reason else f" as {f.task_id}")
    if schedules:
        _sleep_until(celery_app, min(s.timing.next(now) for s in schedules))
    return Triggered(f"{APP_ENTRY}@{tick_iso(now)}", len(firings))


def _sleep_until(celery_app: Celery, at: float) -> None:
    """Make the entry due at `at`: its interval becomes the time from its last run (which
    beat has just recorded) to `at`. If that fails, beat looks again after its usual
    interval, APP_CHECK_S."""
    from celery.schedules import schedule
    from redbeat.schedulers import RedBeatSchedulerEntry

    try:
        key = RedBeatSchedulerEntry.generate_key(celery_app, APP_ENTRY)
        entry = RedBeatSchedulerEntry.from_key(key, app=celery_app)
        if entry.last_run_at is None:
            return
        gap = at + _SLACK_S - entry.last_run_at.timestamp()
        entry.schedule = schedule(dt.timedelta(seconds=max(gap, _SLACK_S)), app=celery_app)
        entry.save()  # the definition; beat's start restores APP_CHECK_S
    except (KeyError, AttributeError, redis.RedisError) as exc:
        log.debug("app-schedules entry not moved (%s): beat looks again in %ss",
                  type(exc).__name__, APP_CHECK_S)


#: wake a little after a tick rather than a rounding error before it
_SLACK_S = 0.01


class AppSchedulesTask(Task):
    """Beat's `app-schedules` entry: `apply_async` fires the schedules here, in beat,
    through the gate; nothing is published for it."""

    def apply_async(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        return trigger(self.app, time.time())


@app.task(name=APP_TASK, base=AppSchedulesTask, shared=False, ignore_result=True)
def app_schedules() -> int:
    """Fire the application schedules due now (run by beat; `sluice schedule check` and
    `ls` show them)."""
    return trigger(app, time.time()).fired
