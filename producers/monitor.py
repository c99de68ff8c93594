"""The pressure monitor: one background thread per producer process samples queue depth.

Each tick is a single pipelined round trip: the four queue lengths, the kill switches, and
the submission counters this process accumulated since the last tick. Submissions read the
latest snapshot from memory, so the gate never costs a round trip per job.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import redis

from producers.deadline import Drain, broken_promise, drain_after, predicted_wait, smooth
from producers.fairness import WINDOW_S, TenantRates, available_rate, busiest
from producers.pressure import LevelState, Thresholds, level_for
from sluice import keys
from sluice.connections import hash_fields, texts
from sluice.keys import SubmitOutcome
from sluice.message import expires_at, waited
from sluice.priorities import QUEUES, PressureLevel, Priority

__all__ = ["PressureEvent", "Snapshot", "PressureMonitor"]

log = logging.getLogger("sluice.pressure")

#: seconds after an outage during which the drain rate is not lowered (workers reconnect)
RECONNECT_GRACE_S = 10.0
#: tenants named per priority in a `pressure_change` event (the busiest)
EVENT_TENANTS = 5
#: the shortest span a rate is measured over (a burst right after a tick is not 1000/s)
MIN_RATE_SPAN_S = 0.25
#: higher priorities' rates are taken out of the drain rate only when the producers offer
#: this much more than it: below that, the drain may be following what arrives rather than
#: measuring capacity, and taking the arrivals out of themselves refused NORMAL jobs in a
#: nearly idle system (CRITICAL probes at 8/s, drained at 8/s: the Flower and console tests)
OVERLOAD = 1.5
#: how long the workers must have drained everything that arrived, tick after tick, for an
#: offer above the drain rate not to count as an overload (a moment's short queue is not it)
KEEPING_UP_S = 2.0


@dataclass(frozen=True, slots=True)
class PressureEvent:
    """A `pressure_change`: the level moved from `old` to `new` at `depth`."""

    old: PressureLevel
    new: PressureLevel
    depth: int
    at: float
    drain_rate: float | None = None
    waits: dict[str, float] = field(default_factory=dict)  #: predicted wait per priority
    #: per priority name, the busiest tenants: [tenant, offered/s, accepted/s]
    tenants: dict[str, list[tuple[str, float, float]]] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"event": "pressure_change", "old": self.old.name,
                           "new": self.new.name, "depth": self.depth, "at": self.at,
                           "drain_rate": self.drain_rate, "predicted_wait_s": self.waits,
                           "tenants": {p: [{"tenant": t, "offered_per_s": round(o, 2),
                                            "accepted_per_s": round(a, 2)} for t, o, a in rows]
                                       for p, rows in self.tenants.items()}})


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the last tick saw: the level, depth per queue, kill switches, how fast jobs
    start (`drain`) and how long the oldest job of each queue has waited (`oldest`)."""

    level: PressureLevel
    depth: int = 0
    depths: dict[str, int] = field(default_factory=dict)
    killswitches: dict[str, str] = field(default_factory=dict)
    at: float = 0.0
    drain: Drain = field(default_factory=Drain)
    oldest: dict[str, float] = field(default_factory=dict)
    #: jobs/s admitted per priority name, by every producer (smoothed like the drain)
    arrivals: dict[str, float] = field(default_factory=dict)
    #: per priority name: jobs/s offered and accepted per tenant, by every producer
    tenants: dict[str, TenantRates] = field(default_factory=dict)
    #: per queue: when its oldest job's deadline passes (epoch seconds; no entry: none)
    expires: dict[str, float] = field(default_factory=dict)
    #: jobs/s offered per priority name (admitted or refused by the gate), by every producer
    demand: dict[str, float] = field(default_factory=dict)
    #: for `KEEPING_UP_S`, every tick saw the workers start at least as many jobs since the
    #: last one as were queued: they drain what arrives, whatever is offered
    keeping_up: bool = False

    def available(self, priority: Priority) -> float | None:
        """Jobs/s `priority` can start: the drain less what higher priorities take."""
        return available_rate(self.drain.rate, self.arrivals, priority)

    def wait_for(self, priority: Priority, admitted: Mapping[str, int] | None = None,
                 now: float | None = None) -> float:
        """The predicted wait before a job of `priority` submitted now starts; `admitted`:
        jobs this process sent since the tick, per queue (the tick has not seen them). The
        higher priorities overtake at the rate they are offered, refused jobs included:
        while their demand is not met, a lower job is not admitted in the gaps (NORMAL and
        LOW accepted while HIGH was refused was priority inversion, under overload)."""
        return self.admission(priority, admitted, now)[0]

    def breaks_promise(self, priority: Priority, admitted: Mapping[str, int] | None = None,
                       now: float | None = None) -> float | None:
        """Seconds to retry after when admitting a job of `priority` now would make the
        oldest queued job of a lower priority start after its deadline; None otherwise.
        CRITICAL's arrivals count against the drain only under overload (see `OVERLOAD`)."""
        return self.admission(priority, admitted, now)[1]

    def admission(self, priority: Priority, admitted: Mapping[str, int] | None = None,
                  now: float | None = None) -> tuple[float, float | None]:
        """`wait_for` and `breaks_promise` from one view of the queues and rates: what the
        gate decides each submission on."""
        depths, demand = self._view(admitted, now, self.arrivals | self.demand)
        overloaded = self._overloaded(demand)
        wait = predicted_wait(depths, priority, self.drain.rate, demand, overloaded)
        critical = demand.get(Priority.CRITICAL.name, 0.0) if overloaded else 0.0
        at = self.at if now is None else now  # epoch seconds, like the messages' expiry
        left = {q: expires - at for q, expires in self.expires.items()}
        return wait, broken_promise(depths, priority, self.drain.rate, left, critical)

    def _overloaded(self, demand: Mapping[str, float]) -> bool:
        """More is offered than drained (`OVERLOAD`): only then do higher priorities' rates
        leave a lower one less than the drain rate. The rate may still be a floor (the
        first second of a burst): offered many times over, it is an overload all the same,
        and waiting for a measure of capacity let a burst's HIGH jobs in as if CRITICAL
        took nothing (late) and its NORMAL and LOW jobs as if HIGH took nothing. But not
        while the workers keep up (`keeping_up`): a rate read low (a worker's slow first
        jobs) then locked NORMAL out as if HIGH took it all, the workers idled, and the
        rate, measured from what the gate let through, never showed what they could do
        (in a bench run it stayed at 55 of 78 jobs/s for ten seconds)."""
        rate = self.drain.rate
        return (rate is not None and not self.keeping_up
                and sum(demand.values()) > OVERLOAD * rate)

    def _view(self, admitted: Mapping[str, int] | None, now: float | None,
              rates: Mapping[str, float]) -> tuple[Mapping[str, int], Mapping[str, float]]:
        """Depths and `rates` (per priority name) as of now: the tick's depths plus what this
        process sent since (`admitted`, per queue). A priority whose rate is not measured yet
        (the first ticks of a burst) is taken to arrive at the rate this process has been
        sending it since the tick, but not while the drain rate is only a floor (one job
        just sent would count as more than an idle floor, and as an overload)."""
        if not admitted:
            return self.depths, rates
        depths = {q: self.depths.get(q, 0) + admitted.get(q, 0) for q in QUEUES}
        if now is None or not self.drain.saturated:
            return depths, rates
        elapsed = max(now - self.at, MIN_RATE_SPAN_S)
        return depths, {p.name: rates.get(p.name, admitted.get(p.queue, 0) / elapsed)
                        for p in Priority}


@dataclass(frozen=True, slots=True)
class Sample:
    """One round trip's readings."""

    depths: dict[str, int]
    switches: dict[str, str]
    started: int
    oldest: dict[str, float]
    expires: dict[str, float]  #: per queue, when the oldest job's deadline passes
    sent: dict[str, int]  #: every producer's jobs sent so far, per priority name
    offered: dict[str, int]  #: and jobs offered so far (sent or refused by the gate)
    tenants: dict[str, TenantRates]  #: the tenant windows' rates, per priority name


PressureHook = Callable[[PressureEvent], None]


class PressureMonitor:
    """Samples depth every `interval` seconds and keeps the current level in memory."""

    def __init__(self, client: redis.Redis, thresholds: Thresholds, interval: float = 0.5,
                 clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self.thresholds = thresholds
        self.interval = interval
        self.clock = clock
        self.hooks: list[PressureHook] = [self._log, self._publish]
        self.snapshot = Snapshot(PressureLevel.UNKNOWN)
        self._state: LevelState | None = None
        self._counts: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._tick_lock = threading.Lock()
        self._started: int | None = None  # the shared job-start counter at the last tick
        self._reconnected_at = -math.inf  # when Redis answered again after an outage
        self._behind_at = -math.inf  # when a tick last saw more queued than just started
        #: the sent and offered counters at the last tick, and when
        self._sent: tuple[dict[str, int], dict[str, int], float | None] = ({}, {}, None)
        self._admitted: collections.Counter[str] = collections.Counter()
        #: `keys.tenant_field` -> submissions since the last tick (flushed to the window)
        self._tenants: collections.Counter[str] = collections.Counter()

    @property
    def level(self) -> PressureLevel:
        return self.snapshot.level

    @property
    def running(self) -> bool:
        """Sampling in this process: a forked child inherits `_thread` but not the thread."""
        return (self._thread is not None and self._pid == os.getpid()
                and self._thread.is_alive())

    @property
    def stale_after(self) -> float:
        """A snapshot older than this is not trusted (a stuck or dead sampler)."""
        return max(4 * self.interval, 1.0)

    def current(self, now: float | None = None) -> Snapshot:
        """The snapshot to decide on: started on first use (again in a forked child), and
        resampled here and now when the sampler has fallen behind, so a stale view can never
        let work through that the queues no longer have room for."""
        if not self.running:
            self.start()
        now = self.clock() if now is None else now
        if now - self.snapshot.at > self.stale_after:
            return self.tick(now)
        return self.snapshot

    def count(self, field_name: str, n: int = 1) -> None:
        """Add to a shared submission counter; flushed to Redis on the next tick."""
        with self._lock:
            self._counts[field_name] += n

    def count_tenant(self, priority: Priority, tenant: str, accepted: bool) -> None:
        """A submission of `tenant` at `priority` was offered (and maybe accepted): counted
        in memory, flushed to the shared window on the next tick."""
        with self._lock:
            self._tenants[keys.tenant_field(priority.name, tenant, offered=True)] += 1
            if accepted:
                self._tenants[keys.tenant_field(priority.name, tenant, offered=False)] += 1

    def tenant_rates(self, priority: Priority) -> TenantRates:
        """Every producer's rates per tenant at `priority` as of the last tick, plus what
        this process accepted since (so that a burst within one tick counts at once)."""
        rates = self.snapshot.tenants.get(priority.name, TenantRates())
        with self._lock:
            mine = {t: n for (p, t, offered), n in
                    ((keys.parse_tenant_field(f), n) for f, n in self._tenants.items())
                    if p == priority.name and not offered}
        if not mine:
            return rates
        accepted = dict(rates.accepted)
        for tenant, n in mine.items():
            accepted[tenant] = accepted.get(tenant, 0.0) + n / WINDOW_S
        return TenantRates(offered=rates.offered, accepted=accepted)

    def tick(self, now: float | None = None) -> Snapshot:
        """Sample once (one round trip) and update the level; emits events on change."""
        with self._tick_lock:
            old = self.snapshot.level
            snap = self._tick(self.clock() if now is None else now)
        if snap.level is not old:  # outside the lock: a slow subscriber delays no sample
            self._emit(PressureEvent(
                old, snap.level, snap.depth, snap.at, snap.drain.rate,
                {p.name: min(snap.wait_for(p), 1e9) for p in Priority},
                {p: busiest(rates, EVENT_TENANTS) for p, rates in snap.tenants.items()}))
        return snap

    def _tick(self, now: float) -> Snapshot:
        with self._lock:
            counts, self._counts = self._counts, collections.Counter()
            tenants, self._tenants = self._tenants, collections.Counter()
        asked = time.monotonic()
        try:
            sample = self._sample(counts, tenants, now)
        except redis.RedisError as exc:
            self._restore(counts, tenants)
            if self.snapshot.level is not PressureLevel.UNKNOWN:
                log.error("Redis unreachable (%s): pressure level UNKNOWN", type(exc).__name__)
            return self._outage(now)
        depth = sum(sample.depths.values())
        self._state = level_for(depth, self.thresholds, self._state, now)
        if self.snapshot.level is PressureLevel.UNKNOWN and self.snapshot.at:
            self._reconnected_at = now  # workers are reconnecting too: no evidence for a while
        elif time.monotonic() - asked > self.stale_after:
            self._reconnected_at = now  # Redis stalled (paused, swapping): workers stalled too
        before, self._started = self._started, sample.started
        drain, (arrivals, demand) = self._drain(before, sample, now), self._rates(sample, now)
        if before is None or sample.started - before < depth:
            self._behind_at = now
        with self._lock:
            self._admitted.clear()  # this sample counts them (or they are in flight: ms)
        return self._set(Snapshot(self._state.level, depth, sample.depths, sample.switches, now,
                                  drain, sample.oldest, arrivals, sample.tenants,
                                  sample.expires, demand,
                                  now - self._behind_at >= KEEPING_UP_S))

    def _outage(self, now: float) -> Snapshot:
        """Redis is unreachable: level UNKNOWN, the last drain and arrivals kept as they were
        (an outage measures nothing), and the counters re-read from scratch afterwards (a
        restarted Redis may have lost them)."""
        self._started, self._sent = None, ({}, {}, None)
        last = self.snapshot
        return self._set(Snapshot(PressureLevel.UNKNOWN, at=now, drain=last.drain,
                                  arrivals=last.arrivals, demand=last.demand))

    def _drain(self, before: int | None, sample: Sample, now: float) -> Drain:
        """The drain rate after this sample (`before`: the job-start counter at the last
        tick). The first sample after an outage only sets the baseline; for
        `RECONNECT_GRACE_S` after it the rate may rise but not fall, because jobs that do
        not start while workers reconnect say nothing about capacity."""
        last = self.snapshot.drain
        if before is None or sample.started < before:  # no baseline, or Redis lost it
            return last.restarted(now)
        # the backlog the workers had at the last tick (after an outage: no baseline, above)
        drain = drain_after(last, sample.started - before, self.snapshot.depth, now)
        if now - self._reconnected_at < RECONNECT_GRACE_S and last.rate is not None:
            return dataclasses.replace(drain, rate=max(last.rate, drain.rate or 0.0))
        return drain

    def _rates(self, sample: Sample, now: float) -> tuple[dict[str, float], dict[str, float]]:
        """Per priority, the smoothed rates at which jobs are being sent and offered (all
        producers)."""
        sent, offered, at = self._sent
        self._sent = (sample.sent, sample.offered, now)
        last = self.snapshot
        if at is None or now <= at:
            return last.arrivals, last.demand

        def rates(now_counts: dict[str, int], before: dict[str, int],
                  smoothed: dict[str, float]) -> dict[str, float]:
            return {p: smooth(smoothed.get(p), max(0, n - before.get(p, 0)), now - at)
                    for p, n in now_counts.items()}
        return (rates(sample.sent, sent, last.arrivals),
                rates(sample.offered, offered, last.demand))

    def admit(self, queue: str) -> None:
        """This process sent a job to `queue`: count it until the next tick sees it."""
        with self._lock:
            self._admitted[queue] += 1

    def admitted(self) -> dict[str, int]:
        """Jobs this process sent since the last tick, per queue."""
        with self._lock:
            return dict(self._admitted)

    def _sample(self, counts: collections.Counter[str], tenants: collections.Counter[str],
                now: float) -> Sample:
        pipe = self.client.pipeline(transaction=False)
        for q in QUEUES:
            pipe.llen(q)
        for q in QUEUES:
            pipe.lindex(q, -1)  # LPUSH + BRPOP: the oldest job is the list's last element
        pipe.hgetall(keys.KILL_SWITCHES)
        pipe.get(keys.STARTED)
        pipe.hgetall(keys.SUBMISSIONS)
        window = int(now // WINDOW_S)
        pipe.hgetall(keys.tenant_window(window - 1))
        for name, n in counts.items():  # this tick's counts are written after the reads
            pipe.hincrby(keys.SUBMISSIONS, name, n)
        for name, n in tenants.items():
            pipe.hincrby(keys.tenant_window(window), name, n)
        if tenants:
            pipe.expire(keys.tenant_window(window), int(4 * WINDOW_S))
        pipe.hgetall(keys.tenant_window(window))
        if self.snapshot.level is not PressureLevel.UNKNOWN:  # last tick's view, for the CLI
            pipe.hset(keys.PRESSURE_STATE, mapping=hash_fields(self._state_fields()))
        replies = pipe.execute()
        n = len(QUEUES)
        submitted = collections.Counter({k: int(v) for k, v in texts(replies[2 * n + 2]).items()})
        submitted.update(counts)
        current = 2 * n + 4 + len(counts) + len(tenants) + (1 if tenants else 0)
        return Sample(
            depths=dict(zip(QUEUES, (int(r) for r in replies[:n]), strict=True)),
            oldest={q: waited(raw, now) for q, raw in zip(QUEUES, replies[n:2 * n],
                                                          strict=True)},
            expires={q: at for q, raw in zip(QUEUES, replies[n:2 * n], strict=True)
                     if (at := expires_at(raw)) is not None},
            switches=texts(replies[2 * n]),
            started=int(replies[2 * n + 1] or 0),
            sent=_by_priority(submitted, _SENT),
            offered=_by_priority(submitted, _OFFERED),
            tenants=tenant_rates(texts(replies[2 * n + 3]), texts(replies[current]),
                                  now - window * WINDOW_S))

    def _state_fields(self) -> dict[str, str | float | int]:
        snap = self.snapshot
        fields: dict[str, str | float | int] = {
            "level": snap.level.name, "depth": snap.depth, "at": snap.at,
            "drain_rate": -1.0 if snap.drain.rate is None else round(snap.drain.rate, 3)}
        for priority in Priority:
            fields[f"wait:{priority.name}"] = round(min(snap.wait_for(priority), 1e9), 3)
        for queue, age in snap.oldest.items():
            fields[f"oldest:{queue}"] = round(age, 3)
        return fields

    def _restore(self, counts: collections.Counter[str],
                 tenants: collections.Counter[str]) -> None:
        with self._lock:
            self._counts.update(counts)
            self._tenants.update(tenants)

    def _set(self, snap: Snapshot) -> Snapshot:
        self.snapshot = snap
        if snap.level is PressureLevel.UNKNOWN:
            self._state = None
        return snap

    def _emit(self, event: PressureEvent) -> None:
        for hook in list(self.hooks):
            try:
                hook(event)
            except Exception:  # a subscriber's bug must not stop the monitor
                log.exception("pressure hook %r failed", hook)

    def _log(self, event: PressureEvent) -> None:
        first = event.old is PressureLevel.UNKNOWN and event.new is PressureLevel.NORMAL
        log.log(logging.INFO if first else logging.WARNING,
                "pressure_change old=%s new=%s depth=%d at=%.3f",
                event.old.name, event.new.name, event.depth, event.at)

    def _publish(self, event: PressureEvent) -> None:
        if event.new is not PressureLevel.UNKNOWN:
            pipe = self.client.pipeline(transaction=False)
            pipe.publish(keys.PRESSURE_CHANNEL, event.to_json())
            pipe.hincrby(keys.PRESSURE_CHANGES, event.new.name, 1)
            pipe.execute()

    def start(self) -> None:
        """Take a first sample now, then keep sampling in a daemon thread."""
        if self.running:
            return
        if self._pid != os.getpid():  # a forked child: its own locks, counters and thread
            self._pid, self._lock, self._tick_lock = os.getpid(), threading.Lock(), \
                threading.Lock()
            self._counts, self._stop = collections.Counter(), threading.Event()
        self.tick()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="sluice-pressure", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.tick()
            except Exception:  # keep sampling: a dead monitor would freeze the level
                log.exception("pressure sample failed")

    def stop(self) -> None:
        """Stop sampling and flush the counters one last time."""
        self._stop.set()
        if self.running and self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self.tick()


#: the submission outcomes that put a job on a queue
_SENT = {SubmitOutcome.ACCEPTED.value, SubmitOutcome.DELAYED.value}
#: and those that asked for capacity: refused for room or time. Not demand: a kill switch's
#: refusals, a tenant's jobs over its share (a noisy HIGH tenant held to its share must not
#: shut NORMAL out for everyone), refusals while Redis is down.
_OFFERED = _SENT | {SubmitOutcome.SHED.value}


def _by_priority(counters: Mapping[str, int], outcomes: set[str]) -> dict[str, int]:
    """Submissions so far per priority name with one of `outcomes`, from the shared
    submission counters."""
    out: dict[str, int] = collections.Counter()
    for field_name, n in counters.items():
        priority, outcome = keys.parse_submission_field(field_name)
        if outcome in outcomes:
            out[priority] += int(n)
    return dict(out)


def tenant_rates(last: dict[str, str], current: dict[str, str],
                  into_current_s: float) -> dict[str, TenantRates]:
    """Per priority, jobs/s per tenant over the last window and the current one so far."""
    span = WINDOW_S + max(into_current_s, 0.0)
    out: dict[str, TenantRates] = {}
    for window in (last, current):
        for field_name, n in window.items():
            priority, tenant, offered = keys.parse_tenant_field(field_name)
            rates = out.setdefault(priority, TenantRates())
            into = rates.offered if offered else rates.accepted
            into[tenant] = into.get(tenant, 0.0) + int(n) / span
    return out
