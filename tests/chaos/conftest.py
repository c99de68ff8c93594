"""Chaos helpers: steady load from a producer thread, and the accounting that must add up."""

from __future__ import annotations

import os
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from producers import Priority, Rejected, default_producer
from sluice.errors import OutcomeUnknown
from workers import effects

#: `make chaos` runs the long versions; `make test` the short ones.
FULL = os.environ.get("SLUICE_CHAOS_FULL") == "1"
#: worker settings under which a dead worker's jobs come back within seconds
FAST_RESTORE = dict(visibility_timeout="8", retry_backoff_max="1", task_time_limit="6",
                    task_soft_time_limit="5", unacked_restore_interval="1",
                    unacked_restore_throttle="1")


def duration(short: float, full: float = 60.0) -> float:
    return full if FULL else short


@dataclass
class Load:
    """Jobs offered by a background thread: every accepted task id, the refusals, the jobs
    whose fate Redis did not tell (`OutcomeUnknown`), and any other error (which would
    otherwise end the thread silently)."""

    accepted: set[str] = field(default_factory=set)
    rejected: list[Rejected] = field(default_factory=list)
    unknown: set[str] = field(default_factory=set)
    errors: list[Exception] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def run(self, seconds: float, rate: float = 40.0, linger_s: float = 0.0) -> Load:
        """Offer `rate` jobs a second for `seconds`; each holds its worker slot `linger_s`
        after its effect (so that jobs are in flight when a fault strikes)."""
        def offer() -> None:
            n, until = 0, time.monotonic() + seconds
            producer = default_producer()
            while not self.stop.is_set() and time.monotonic() < until:
                priority = list(Priority)[n % 4]
                payload = {"actor": "chaos", "action": f"a{n}", "linger_s": linger_s}
                try:
                    receipt = producer.submit("audit.record", payload, priority=priority)
                    self.accepted.add(receipt.task_id)
                except Rejected as rej:
                    self.rejected.append(rej)
                except OutcomeUnknown as exc:
                    self.unknown.add(exc.task_id)
                except Exception as exc:
                    self.errors.append(exc)
                n += 1
                self.stop.wait(1 / rate)  # the offer's pace; stops at once when told

        self.thread = threading.Thread(target=offer, daemon=True)
        self.thread.start()
        return self

    def wait(self) -> None:
        assert self.thread is not None
        self.thread.join(300)


class Supervisor:
    """Restarts a process whenever it exits, as the Procfile's or Compose's supervisor
    does (celery beat exits when Redis goes away)."""

    def __init__(self, start: Callable[[], Any]) -> None:
        self.start, self.proc, self.restarts = start, start(), 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        while not self.done.wait(0.2):
            if not self.proc.alive():
                self.proc, self.restarts = self.start(), self.restarts + 1

    def stop(self) -> None:
        self.done.set()
        self.thread.join(10)


def completed() -> list[str]:
    """Task ids whose effect was applied (audit.record applies it at most once)."""
    return [r["task_id"] for r in effects.read("audit")]


def runs(worker_logs: Iterable[str]) -> Counter[str]:
    """How many times each audit.record job ran to the end, from the workers' logs (the
    effect is keyed, so a second run shows here and not in `completed`)."""
    return Counter(m for log in worker_logs
                   for m in re.findall(r"Task audit\.record\[([0-9a-f-]+)\] succeeded", log))


@pytest.fixture
def load() -> Iterator[Load]:
    loader = Load()
    yield loader
    loader.stop.set()
