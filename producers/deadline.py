"""Accepted means served in time: the gate's deadline decisions, pure (values in, frozen
dataclasses out, time passed in).

Depth in jobs says nothing about waiting without the rate at which jobs start: 5,000 jobs
are a second of work for a large fleet and an hour for one worker. The monitor counts job
starts per tick; `drain_after` smooths them into a rate (an exponentially weighted average
over the ticks when work was waiting, so an idle fleet does not look slow); `predicted_wait`
is the work ahead of a new job under strict queue order divided by that rate; `admit` adds
the deadline to DESIGN.md's depth table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from producers.pressure import Decision, decide
from sluice.priorities import PressureLevel, Priority

__all__ = ["Drain", "drain_after", "predicted_wait", "admit", "DEADLINE"]

DEADLINE = "DEADLINE"


@dataclass(frozen=True, slots=True, kw_only=True)
class Drain:
    """How fast jobs start: `rate` jobs/s (None until measured), as of `at`."""

    rate: float | None = None
    at: float | None = None


def drain_after(previous: Drain, started: int, waiting: int, now: float,
                half_life_s: float = 2.0) -> Drain:
    """The drain after a tick that saw `started` job starts since `previous.at`, with
    `waiting` jobs queued. A tick with nothing waiting says nothing about capacity (the
    starts then follow arrivals) and keeps the old rate; the first tick only sets the clock;
    the rate stays unknown until a first start is seen (then it can decay to 0 when workers
    stop: a rate of 0 is measured, never assumed)."""
    if previous.at is None or now <= previous.at:
        return Drain(rate=previous.rate, at=now)
    elapsed = now - previous.at
    if waiting == 0:  # starts with an empty queue measure arrivals, not capacity
        return Drain(rate=previous.rate, at=now)
    sample = started / elapsed
    if previous.rate is None:  # no start seen yet: no evidence of capacity, or of its lack
        return Drain(rate=sample if started else None, at=now)
    keep = 0.5 ** (elapsed / half_life_s)
    return Drain(rate=keep * previous.rate + (1 - keep) * sample, at=now)


def predicted_wait(depths: Mapping[str, int], priority: Priority, rate: float | None) -> float:
    """Seconds until a job of `priority` submitted now starts: the jobs queued at its
    priority and above (strict order: they all start first), divided by the drain rate.
    Unknown rate: 0 (no evidence to refuse on); no drain with work ahead: infinite."""
    ahead = sum(depths.get(p.queue, 0) for p in Priority if p <= priority)
    if ahead == 0 or rate is None:
        return 0.0
    if rate <= 0:
        return math.inf
    return ahead / rate


def admit(level: PressureLevel, priority: Priority, wait_s: float,
          deadline_s: float | None) -> Decision:
    """DESIGN.md's depth table, and then the deadline: a job that would start after its
    deadline is refused now (`DEADLINE`, retry when the backlog ahead would have drained)
    rather than accepted to rot. CRITICAL has no deadline and is never refused."""
    decision = decide(level, priority)
    if not decision.allowed or priority is Priority.CRITICAL or deadline_s is None:
        return decision
    if wait_s + decision.delay_ms / 1000 <= deadline_s:
        return decision
    retry = wait_s - deadline_s if math.isfinite(wait_s) else deadline_s
    return Decision(allowed=False, reason=DEADLINE, retry_after_s=round(max(1.0, retry), 1))
