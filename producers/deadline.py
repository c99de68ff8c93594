"""Accepted means served in time: the gate's deadline decisions, pure (values in, frozen
dataclasses out, time passed in).

Depth in jobs says nothing about waiting without the rate at which jobs start: 5,000 jobs
are a second of work for a large fleet and an hour for one worker. The monitor counts job
starts per tick; `drain_after` smooths them into a rate (an exponentially weighted average
over the ticks when the queues never ran dry, so an idle fleet does not look slow); `predicted_wait`
is the work ahead of a new job under strict queue order divided by that rate;
`broken_promise` says when admitting a job would make an accepted lower job late; `admit`
adds both to DESIGN.md's depth table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

from producers.pressure import Decision, decide
from sluice.priorities import PressureLevel, Priority

__all__ = ["Drain", "drain_after", "smooth", "predicted_wait", "broken_promise", "admit",
           "DEADLINE", "HEADROOM", "OVERTAKE_MARGIN", "PROMISE_MARGIN_S"]

DEADLINE = "DEADLINE"
#: a job is admitted when its predicted wait fits in this fraction of its deadline: the
#: prediction is an estimate (the overload bench saw actual/predicted spread around 1), and a
#: job admitted at the very edge of its deadline is late half the time; at 0.8, 1.2 % of
#: HIGH jobs admitted in a 10x burst's first seconds were late (a floor of a rate measured
#: over a burst of prefetched starts runs ahead of capacity)
HEADROOM = 0.75
#: higher priorities' arrival rates count this much more: they are smoothed averages, and
#: when they take nearly all the capacity (the gate fills it with HIGH under overload) what
#: is left for a lower priority is noise around zero. Jobs admitted on that noise starved.
OVERTAKE_MARGIN = 1.25
#: seconds before its deadline by which an accepted lower job must be able to start: higher
#: work is admitted while it leaves that (the queue above then drains to nothing by then)
PROMISE_MARGIN_S = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Drain:
    """How fast jobs start: `rate` jobs/s (None until measured), as of `at`. `saturated`:
    the rate was measured with work waiting (capacity), not only as a floor from the starts
    of an idle system (which follow arrivals)."""

    rate: float | None = None
    at: float | None = None
    saturated: bool = False


def drain_after(previous: Drain, started: int, backlog: int, now: float,
                half_life_s: float = 2.0) -> Drain:
    """The drain after a tick that saw `started` job starts since `previous.at`, when
    `backlog` jobs were queued at `previous.at`. Only when the backlog was more than what
    started did the queues never run dry, the workers never wait for work, and the starts
    measure capacity. Otherwise they follow arrivals: they can only raise the rate
    (capacity is at least that), which gives a cold start a floor to predict with. (A tick
    that merely saw a job waiting at the sample is no evidence of capacity: probes at 8
    jobs/s drained as they came read as a capacity of 8 jobs/s; and a gate holding queues
    short read its own trickle as capacity and shut down a third of it.) The first tick
    only sets the clock; the rate stays unknown until a first start is seen (then it can
    decay to 0 when workers stop: a rate of 0 is measured, never assumed). The first
    measure of capacity replaces a floor (never going below it) rather than being averaged
    with it (a floor of 2 jobs/s from one warm-up job dragged the first seconds of a burst
    down to a few jobs/s, and the gate refused everyone's jobs)."""
    if previous.at is None or now <= previous.at:
        return replace(previous, at=now)
    if backlog <= started:  # the queues ran dry: the starts follow arrivals, a floor
        if not started:
            return replace(previous, at=now)
        return replace(previous, at=now,
                       rate=max(previous.rate or 0.0, started / (now - previous.at)))
    if previous.rate is None and not started:  # no evidence of capacity, or of its lack
        return Drain(rate=None, at=now)
    if not previous.saturated and started:  # the first measure of capacity: a floor is
        return Drain(rate=max(previous.rate or 0.0, started / (now - previous.at)), at=now,
                     saturated=True)  # not averaged in (but capacity is at least the floor)
    return Drain(rate=smooth(previous.rate, started, now - previous.at, half_life_s), at=now,
                 saturated=True)


def smooth(previous: float | None, count: int, elapsed_s: float,
           half_life_s: float = 2.0) -> float:
    """An exponentially weighted rate: `count` events in `elapsed_s`, blended with the
    previous rate so that it halves its weight every `half_life_s`."""
    sample = count / elapsed_s
    if previous is None:
        return sample
    keep: float = 0.5 ** (elapsed_s / half_life_s)
    return keep * previous + (1 - keep) * sample


def predicted_wait(depths: Mapping[str, int], priority: Priority, rate: float | None,
                   arrivals: Mapping[str, float] | None = None,
                   saturated: bool = True) -> float:
    """Seconds until a job of `priority` submitted now starts: the jobs queued at its
    priority and above (strict order: they all start first), divided by what the drain
    rate leaves once the jobs still arriving at higher priorities (`arrivals`, jobs/s per
    priority name, with `OVERTAKE_MARGIN`) have taken their share: those overtake it too.
    Unknown rate: 0 (no evidence to refuse on); nothing left for it with work ahead:
    infinite. A rate that is only a floor (`saturated` False: measured while idle, so it is
    the arrivals themselves) says how long the work ahead takes at least, not what
    higher priorities leave: then arrivals are not subtracted."""
    ahead = sum(depths.get(p.queue, 0) for p in Priority if p <= priority)
    if ahead == 0 or rate is None:
        return 0.0
    overtaking = sum((arrivals or {}).get(p.name, 0.0) for p in Priority if p < priority)
    left = rate - OVERTAKE_MARGIN * overtaking if saturated else rate
    if left <= 0:
        return math.inf
    return ahead / left



def broken_promise(depths: Mapping[str, int], priority: Priority, rate: float | None,
                   time_left: Mapping[str, float], critical_rate: float = 0.0) -> float | None:
    """Accepted means served in time for the jobs already accepted too. A job of
    `priority` starts before every queued job of a lower priority, so admitting it delays
    them; without this check a burst of higher work, each job fitting its own deadline,
    starved the NORMAL and LOW jobs accepted in the burst's first second (overload bench).

    Returns seconds to retry after (when that backlog would have drained) if, after this
    job and the work queued above, the jobs of a lower queue would not start
    `PROMISE_MARGIN_S` before the deadline of its oldest job (`time_left`, per queue; the
    only deadline the monitor reads, so every job of the queue is held to it: right for a
    burst's jobs, early for the rest), within the `HEADROOM`, while CRITICAL goes on
    arriving at `critical_rate`; None otherwise. CRITICAL is never refused, so it is the
    only rate used: refusable work above is held job by job by this same check (as the
    lower job's time runs out its room shrinks faster than the queue drains, so the queue
    above is empty `PROMISE_MARGIN_S` / `HEADROOM` before the deadline), and a burst such
    as a bulk replay is not a rate. Not defended: a promise already broken, one that is
    doomed whatever is refused now (the work queued above takes longer than its time
    left, or CRITICAL alone takes the whole drain), and anything while the rate is
    unknown."""
    if rate is None or rate <= 0 or priority is Priority.CRITICAL:
        return None
    left = rate - OVERTAKE_MARGIN * critical_rate
    if left <= 0:  # CRITICAL alone takes it all: every lower job is late whatever is refused
        return None
    for lower in (p for p in Priority if p > priority):
        left_s = time_left.get(lower.queue)
        if not depths.get(lower.queue, 0) or left_s is None or left_s <= 0:
            continue
        above = [p for p in Priority if p < lower]
        queued = sum(depths.get(p.queue, 0) for p in above)
        if queued / rate > left_s:
            continue  # late whatever is refused now
        # the queue's last job starts after this one, the work above and the rest of its
        # queue; its deadline is taken to be the oldest's (a burst's jobs share one)
        last = queued + depths[lower.queue]
        if last / left > HEADROOM * left_s - PROMISE_MARGIN_S:
            return round(max(1.0, min(last / rate, left_s)), 1)
    return None


def admit(level: PressureLevel, priority: Priority, wait_s: float,
          deadline_s: float | None, breaks_promise_s: float | None = None) -> Decision:
    """DESIGN.md's depth table, and then the deadlines: a job that would start after its
    own deadline (less the `HEADROOM`), or would make an accepted lower job start after
    its deadline (`breaks_promise_s`: then retry after that many seconds, see
    `broken_promise`), is refused now (`DEADLINE`, retry when the backlog ahead would have
    drained) rather than accepted to rot. CRITICAL has no deadline and is never refused."""
    decision = decide(level, priority)
    if not decision.allowed or priority is Priority.CRITICAL:
        return decision
    if breaks_promise_s is not None:
        return Decision(allowed=False, reason=DEADLINE, retry_after_s=breaks_promise_s)
    if deadline_s is None:
        return decision
    if wait_s + decision.delay_ms / 1000 <= HEADROOM * deadline_s:
        return decision
    retry = wait_s - HEADROOM * deadline_s if math.isfinite(wait_s) else deadline_s
    return Decision(allowed=False, reason=DEADLINE, retry_after_s=round(max(1.0, retry), 1))
