"""When an application schedule fires: pure functions of the schedule and `now` (epoch s, UTC).

Ticks lie on a fixed grid, whichever beat computes them: a cron expression's times (UTC), or
the multiples of an `every` interval since the epoch (every 15 min fires at :00, :15, :30,
:45). So two beats, or a beat taking over after a failover, name each tick alike, and the
idempotency key built from it (schedule name + tick) enqueues a tick once.

`plan_ticks` decides what one look at the clock fires: the ticks since the last one dealt
with, on time or missed. A tick is missed when it is older than the grace (a beat that was
down or stalled); `missed = "skip"` drops missed ticks, `missed = "once"` fires the latest of
them once.
"""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass

from croniter import croniter

__all__ = ["Missed", "Timing", "TickPlan", "parse_every", "cron_problem", "plan_ticks",
           "grace_for", "MAX_MISSED_COUNT", "NEW_S"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
#: missed ticks are counted up to this many (a beat down for a month, every second)
MAX_MISSED_COUNT = 10_000
#: a new schedule (no tick dealt with yet) fires a tick this recent, none older
NEW_S = 1.0


class Missed(enum.StrEnum):
    """What a beat that was down does, on its return, with the ticks it missed."""

    SKIP = "skip"  #: drop them; fire from the next tick on
    ONCE = "once"  #: fire the latest missed tick once, then go on


def parse_every(value: object) -> int:
    """`"15m"`, `"90s"`, `"2h"`, `"1d"`, `"1h30m"` or a number of seconds -> whole seconds
    (at least 1). ValueError naming the problem otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"every must be a duration such as \"15m\" (got {value!r})")
    if isinstance(value, str):
        parts = re.findall(r"(\d+)\s*([smhd])", value.strip().lower())
        if not parts or re.sub(r"\s|\d+\s*[smhd]", "", value.lower()):
            raise ValueError(f"every {value!r} is not a duration (examples: 30s, 15m, 2h, 1d, "
                             "1h30m)")
        seconds: float = sum(int(n) * _UNITS[unit] for n, unit in parts)
    else:
        seconds = value
    if not math.isfinite(seconds) or seconds < 1 or seconds != int(seconds):
        raise ValueError(f"every {value!r} must be a whole number of seconds, at least 1s")
    return int(seconds)


def cron_problem(expr: object) -> str | None:
    """Why `expr` is no cron expression this module fires (five fields, or an alias such as
    `@daily`), or None."""
    if not isinstance(expr, str) or not expr.strip():
        return f"cron must be a string such as \"0 6 * * *\" (got {expr!r})"
    text = expr.strip()
    if not text.startswith("@") and len(text.split()) != 5:
        return (f"cron {expr!r} must have 5 fields (minute hour day-of-month month "
                "day-of-week), in UTC")
    if not croniter.is_valid(text):
        return f"cron {expr!r} is not a valid cron expression"
    return None


@dataclass(frozen=True, slots=True)
class Timing:
    """A schedule's grid: `cron` (UTC) or `every_s` seconds, exactly one of them."""

    cron: str | None = None
    every_s: int | None = None

    def __post_init__(self) -> None:
        if (self.cron is None) == (self.every_s is None):
            raise ValueError("a timing has exactly one of cron and every")

    def prev(self, t: float) -> float:
        """The latest tick at or before `t`."""
        if self.every_s is not None:
            return math.floor(t / self.every_s) * float(self.every_s)
        # cron ticks fall on whole seconds: any tick <= t is < floor(t) + 0.5, and back
        return float(croniter(self.cron, math.floor(t) + 0.5).get_prev(float))

    def next(self, t: float) -> float:
        """The earliest tick strictly after `t`."""
        if self.every_s is not None:
            return self.prev(t) + self.every_s
        return float(croniter(self.cron, t).get_next(float))

    def describe(self) -> str:
        """`every 900s` or `cron 0 6 * * *`, for tables."""
        return f"every {self.every_s}s" if self.every_s is not None else f"cron {self.cron}"


def grace_for(timing: Timing, now: float) -> float:
    """How late a tick may fire and still be on time: the period, between 5 s and 60 s. Older
    ticks were missed (beat down, or stalled longer than that)."""
    period = timing.next(now) - timing.prev(now)
    return min(60.0, max(5.0, period))


@dataclass(frozen=True, slots=True)
class TickPlan:
    """What one look at the clock does: fire `fire` (oldest first), drop `skipped` missed
    ticks, and remember `last` as the latest tick dealt with."""

    fire: tuple[float, ...]
    skipped: int
    last: float


def plan_ticks(timing: Timing, missed: Missed, last: float | None, now: float) -> TickPlan:
    """The ticks due at `now`, given `last`, the latest tick already dealt with (None: the
    schedule is new: it does not fire its past, only a tick of the last second)."""
    grace = grace_for(timing, now)
    cutoff = now - grace
    if last is None:
        last = now - NEW_S
    on_time = []
    tick = timing.next(max(last, cutoff))
    while tick <= now:
        on_time.append(tick)
        tick = timing.next(tick)
    overdue = _count_between(timing, last, cutoff)
    newest = max(last, *on_time, timing.prev(cutoff) if overdue else last)
    fire = tuple(on_time)
    if overdue and missed is Missed.ONCE:
        fire = (timing.prev(cutoff), *fire)
        overdue -= 1
    return TickPlan(fire=fire, skipped=overdue, last=newest)


def _count_between(timing: Timing, after: float, until: float) -> int:
    """How many ticks lie in (after, until], counted up to MAX_MISSED_COUNT."""
    if until <= after:
        return 0
    if timing.every_s is not None:
        return min(MAX_MISSED_COUNT,
                   int((timing.prev(until) - timing.prev(after)) // timing.every_s))
    count, tick = 0, timing.next(after)
    while tick <= until and count < MAX_MISSED_COUNT:
        count, tick = count + 1, timing.next(tick)
    return count
