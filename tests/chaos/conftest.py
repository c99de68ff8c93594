"""Chaos helpers: steady load from a producer thread, and the accounting that must add up."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from producers import Priority, Rejected, default_producer
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
    """Jobs offered by a background thread: every accepted task id, and the refusals."""

    accepted: set[str] = field(default_factory=set)
    rejected: list[Rejected] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def run(self, seconds: float, rate: float = 40.0) -> Load:
        def offer() -> None:
            n, until = 0, time.monotonic() + seconds
            producer = default_producer()
            while not self.stop.is_set() and time.monotonic() < until:
                priority = list(Priority)[n % 4]
                try:
                    receipt = producer.submit("audit.record", {"actor": "chaos",
                                                               "action": f"a{n}"},
                                              priority=priority)
                    self.accepted.add(receipt.task_id)
                except Rejected as rej:
                    self.rejected.append(rej)
                n += 1
                time.sleep(1 / rate)

        self.thread = threading.Thread(target=offer, daemon=True)
        self.thread.start()
        return self

    def wait(self) -> None:
        assert self.thread is not None
        self.thread.join(300)


def completed() -> list[str]:
    """Task ids whose effect was applied (audit.record applies it at most once)."""
    return [r["task_id"] for r in effects.read("audit")]


@pytest.fixture
def load() -> Iterator[Load]:
    loader = Load()
    yield loader
    loader.stop.set()
