"""The pressure monitor: one background thread per producer process samples queue depth.

Each tick is a single pipelined round trip: the four queue lengths, the kill switches, and
the submission counters this process accumulated since the last tick. Submissions read the
latest snapshot from memory, so the gate never costs a round trip per job.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis

from producers.pressure import LevelState, Thresholds, level_for
from sluice import keys
from sluice.priorities import QUEUES, PressureLevel

__all__ = ["PressureEvent", "Snapshot", "PressureMonitor"]

log = logging.getLogger("sluice.pressure")


@dataclass(frozen=True, slots=True)
class PressureEvent:
    """A `pressure_change`: the level moved from `old` to `new` at `depth`."""

    old: PressureLevel
    new: PressureLevel
    depth: int
    at: float

    def to_json(self) -> str:
        return json.dumps({"event": "pressure_change", "old": self.old.name,
                           "new": self.new.name, "depth": self.depth, "at": self.at})


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the last tick saw."""

    level: PressureLevel
    depth: int = 0
    depths: dict[str, int] = field(default_factory=dict)
    killswitches: dict[str, str] = field(default_factory=dict)
    at: float = 0.0


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

    def tick(self, now: float | None = None) -> Snapshot:
        """Sample once (one round trip) and update the level; emits events on change."""
        with self._tick_lock:
            old = self.snapshot.level
            snap = self._tick(self.clock() if now is None else now)
        if snap.level is not old:  # outside the lock: a slow subscriber delays no sample
            self._emit(PressureEvent(old, snap.level, snap.depth, snap.at))
        return snap

    def _tick(self, now: float) -> Snapshot:
        with self._lock:
            counts, self._counts = self._counts, collections.Counter()
        try:
            depths, switches = self._sample(counts)
        except redis.RedisError as exc:
            self._restore(counts)
            if self.snapshot.level is not PressureLevel.UNKNOWN:
                log.error("Redis unreachable (%s): pressure level UNKNOWN", type(exc).__name__)
            return self._set(Snapshot(PressureLevel.UNKNOWN, at=now))
        depth = sum(depths.values())
        self._state = level_for(depth, self.thresholds, self._state, now)
        return self._set(Snapshot(self._state.level, depth, depths, switches, now))

    def _sample(self, counts: collections.Counter[str]) -> tuple[dict[str, int], dict[str, str]]:
        pipe = self.client.pipeline(transaction=False)
        for q in QUEUES:
            pipe.llen(q)
        pipe.hgetall(keys.KILL_SWITCHES)
        for name, n in counts.items():
            pipe.hincrby(keys.SUBMISSIONS, name, n)
        if self.snapshot.level is not PressureLevel.UNKNOWN:  # last tick's view, for the CLI
            pipe.hset(keys.PRESSURE_STATE, mapping={
                "level": self.snapshot.level.name, "depth": self.snapshot.depth,
                "at": self.snapshot.at})
        replies = pipe.execute()
        depths = dict(zip(QUEUES, (int(n) for n in replies[: len(QUEUES)])))
        switches = {k.decode(): v.decode() for k, v in replies[len(QUEUES)].items()}
        return depths, switches

    def _restore(self, counts: collections.Counter[str]) -> None:
        with self._lock:
            self._counts.update(counts)

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
