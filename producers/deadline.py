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
from typing import Any

from producers.pressure import Decision, decide
from sluice.priorities import PressureLevel, Priority

__all__ = ["Drain", "Pool", "Step", "drain_after", "smooth", "predicted_wait", "broken_promise",
           "admit", "DEADLINE", "HEADROOM", "OVERTAKE_MARGIN", "PROMISE_MARGIN_S"]

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


#: a tick measures capacity only if the backlog at its start was this many times what the
#: rate expects to start in it: whether a short backlog outlasts a tick depends on how many
#: jobs started in it, so with the short queues the gate keeps only the slow ticks
#: qualified, and the rate was biased low
MEASURE_BACKLOG = 1.5
#: a floor, and the first measure of capacity, pool their ticks until they hold this many
#: starts, or seconds: one or two starts in a tenth of a second read 9 and 18 jobs/s of a
#: fleet draining 47 (a worker's first jobs on a loaded machine), and the gate refused a
#: light load as an overload (tests/chaos/test_stall.py). After a first measure, the
#: average (`half_life_s`) and the step rule weigh the evidence.
EVIDENCE_STARTS = 10
EVIDENCE_S = 1.0
#: a span without a job start while work waited, longer than this and than `STALL_STARTS`
#: expected starts, is a stall (workers starved of CPU, stopped, reconnecting), not a
#: measure: read as one, two seconds of it turned a light load into an "overload" and the
#: gate refused jobs with minutes to spare (tests/chaos/test_stall.py)
STALL_S = 1.0
STALL_STARTS = 3.0
#: this long after a span became a stall, its time counts: workers that start nothing for
#: so long may be gone
STALL_GRACE_S = 5.0
#: measures in a row this far off the rate, the same way, over at least `STEP_SPAN_S` and
#: `STEP_STARTS` starts, are a step in capacity (half the workers lost, or more added): the
#: rate takes them at once rather than averaging towards them (7.6 s to follow a loss of
#: half the workers with the average alone)
STEP = 0.2
STEP_SPAN_S = 1.0
STEP_STARTS = 10
#: between steps, measures are averaged over at least the time this many starts take: at a
#: few jobs a minute, two seconds' memory is one start, and the rate swung with every gap
#: (two slots of 30 s jobs, started a second apart, read 0.3 and 0.003 jobs/s in turn)
AVERAGE_STARTS = 3.0


@dataclass(frozen=True, slots=True)
class Pool:
    """Starts and seconds gathered until they are evidence (`EVIDENCE_STARTS`)."""

    started: int = 0
    seconds: float = 0.0

    def add(self, started: int, seconds: float) -> Pool:
        return Pool(self.started + started, self.seconds + seconds)

    @property
    def rate(self) -> float | None:
        """Jobs/s, once there is evidence; None before."""
        if self.started < EVIDENCE_STARTS and self.seconds < EVIDENCE_S:
            return None
        return self.started / self.seconds


@dataclass(frozen=True, slots=True)
class Step:
    """Consecutive measures off the rate the same way (`direction` -1 or +1; 0: none), and
    the starts and seconds they hold."""

    direction: int = 0
    span: Pool = Pool()


@dataclass(frozen=True, slots=True, kw_only=True)
class Drain:
    """How fast jobs start: `rate` jobs/s (None until measured), as of `at`. `saturated`:
    the rate was measured with work waiting (capacity), not only as a floor from the starts
    of an idle system (which follow arrivals). `since`: when the span being measured began
    (ticks with work waiting and no start extend it); `stalled_at`: when that span became
    a stall (`STALL_S`); `step`: measures in a row off the rate; `floors`: the ticks that
    saw starts, pooled for a floor; `pending`: before the first measure, those that
    measured capacity, pooled for it."""

    rate: float | None = None
    at: float | None = None
    saturated: bool = False
    since: float | None = None
    stalled_at: float | None = None
    step: Step = Step()
    floors: Pool = Pool()
    pending: Pool = Pool()

    def restarted(self, now: float, **changes: Any) -> Drain:
        """This drain with a new span beginning `now` (no stall, no step running across)."""
        return replace(self, at=now, since=now, stalled_at=None, step=Step(), **changes)


def drain_after(previous: Drain, started: int, backlog: int, now: float,
                half_life_s: float = 2.0) -> Drain:
    """The drain after a tick that saw `started` job starts since `previous.at`, when
    `backlog` jobs were queued at `previous.at`. Only when the backlog was more than what
    started did the queues never run dry, the workers never wait for work, and the starts
    measure capacity; and only when the backlog was ample (`MEASURE_BACKLOG`) does that
    not select the slow ticks. When the queues ran dry the starts follow arrivals: they
    give a cold start a floor to predict with (capacity is at least that; `_floor`). (A
    tick that merely saw a job waiting at the sample is no evidence of capacity: probes at
    8 jobs/s drained as they came read as a capacity of 8 jobs/s; and a gate holding queues
    short read its own trickle as capacity and shut down a third of it.) The first tick
    only sets the clock; the rate stays unknown until there is evidence. The first measure
    of capacity waits for evidence (`EVIDENCE_STARTS`), then replaces a floor (never going
    below it) rather than being averaged with it (a floor of 2 jobs/s from one warm-up job
    dragged the first seconds of a burst down to a few jobs/s, and the gate refused
    everyone's jobs).

    A tick with work waiting and no start concludes nothing: the next start measures the
    whole span (long jobs start seconds apart), unless the span became a stall
    (`STALL_S`): then the tick that ends it measures nothing either (a catch-up, or a stall
    that ended mid-tick: neither is capacity) and no step runs across it; from
    `STALL_GRACE_S` after the span became one, its time counts (the workers may be gone,
    and the promises made meanwhile would be broken; and a rate far too high for long jobs
    comes down to them). A step in capacity is taken at once (`STEP`); between steps the
    measures are averaged (`half_life_s`)."""
    if previous.at is None or now <= previous.at:
        return previous.restarted(now)
    tick = now - previous.at
    if backlog <= started:  # the queues ran dry: the starts follow arrivals, a floor
        return _floor(previous.restarted(now), started, tick)
    since = previous.at if previous.since is None else previous.since
    if not started:  # work waited and nothing started: the span goes on
        return _waited(previous, since, now, tick, half_life_s)
    if previous.stalled_at is not None:  # a stall ends: a catch-up, or it ended mid-tick
        if previous.saturated:
            return previous.restarted(now)  # neither is capacity
        since = previous.at  # before a measure, its last tick is pooled like any other
    if previous.rate is not None and backlog < MEASURE_BACKLOG * previous.rate * tick:
        return previous.restarted(now)  # too short to tell: only slow ticks would qualify
    if previous.rate is None or not previous.saturated:
        return _first_measure(previous, started, now - since, now)
    return _measured(previous.rate, previous.step, started, now - since, now, half_life_s)


def _waited(previous: Drain, since: float, now: float, tick: float,
            half_life_s: float) -> Drain:
    """The drain after a tick in which work waited and nothing started: the span goes on,
    and becomes a stall after `STALL_S` and `STALL_STARTS` expected starts (without a rate,
    after `STALL_S`), whose time counts `STALL_GRACE_S` after that."""
    stalled_at, rate = previous.stalled_at, previous.rate
    if stalled_at is None:
        stall = max(STALL_S, STALL_STARTS / rate) if rate else STALL_S
        stalled_at = since + stall if now - since > stall else None
    if stalled_at is None:
        return replace(previous, at=now, since=since)
    believed = min(tick, now - stalled_at - STALL_GRACE_S)
    if rate is not None and believed > 0:  # stopped for good, or gone
        rate = smooth(rate, 0, believed, half_life_s)
    return replace(previous, rate=rate, at=now, since=since, stalled_at=stalled_at,
                   step=Step())


def _floor(drain: Drain, started: int, seconds: float) -> Drain:
    """`drain` after `started` starts in `seconds` that say the workers can do at least that
    many: pooled until they are evidence (the top of one tick's noise is not capacity),
    then a floor under the rate."""
    if not started:  # idle: nothing to say
        return drain
    floors = drain.floors.add(started, seconds)
    if floors.rate is None:
        return replace(drain, floors=floors)
    return replace(drain, rate=max(drain.rate or 0.0, floors.rate), floors=Pool())


def _first_measure(previous: Drain, started: int, span: float, now: float) -> Drain:
    """The ticks that measured capacity, pooled until they are evidence (meanwhile a
    floor); then the first rate of capacity, which replaces the floor (but capacity is at
    least the floor)."""
    pending = previous.pending.add(started, span)
    if pending.rate is None:
        return _floor(previous.restarted(now, pending=pending), started, span)
    return Drain(rate=max(previous.rate or 0.0, pending.rate), at=now, saturated=True,
                 since=now)


def _measured(rate: float, step: Step, started: int, span: float, now: float,
              half_life_s: float) -> Drain:
    """The rate after a measure of capacity (`started` in `span` seconds): a step if the
    measures in a row off the rate make one (`STEP`), else the smoothed average."""
    sample = started / span
    direction = -1 if sample < (1 - STEP) * rate else 1 if sample > (1 + STEP) * rate else 0
    if not direction:
        step = Step()
    else:
        step = Step(direction, (step.span if direction == step.direction else Pool()).add(
            started, span))
    if step.span.seconds >= STEP_SPAN_S and step.span.started >= STEP_STARTS:
        return Drain(rate=step.span.started / step.span.seconds, at=now, saturated=True,
                     since=now)
    half_life_s = max(half_life_s, AVERAGE_STARTS / rate) if rate else half_life_s
    return Drain(rate=smooth(rate, started, span, half_life_s), at=now, saturated=True,
                 since=now, step=step)


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
