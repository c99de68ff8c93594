"""The deadline-aware gate with real workers: it measures how fast jobs start, refuses up
front a job that would start after its deadline, and follows a change of capacity."""

from __future__ import annotations

import pytest

from producers import Priority, Rejected, default_producer, submit, submit_many
from tests.conftest import Env, Processes
from tests.services import wait_for

SLOW = {"sleep_s": 0.2}  # demo.flaky: 5 jobs/s per worker slot


def _rate() -> float:
    rate = default_producer().monitor.current().drain.rate
    return rate if rate is not None else 0.0


def test_a_job_that_would_start_after_its_deadline_is_refused_up_front(
        sluice_env: Env, processes: Processes) -> None:
    processes.worker(concurrency=1, drain_seconds="1")
    producer = default_producer()
    producer.start()
    submit_many("demo.flaky", [SLOW] * 40)  # ~8 s of work queued at NORMAL
    wait_for(lambda: _rate() > 1.0, timeout=20, what="a measured drain rate")
    wait = producer.monitor.current().wait_for(Priority.LOW)
    assert wait > 2.0
    with pytest.raises(Rejected) as info:
        submit("analytics.track", {"event": "late"}, deadline=1.0)
    assert info.value.reason == "DEADLINE"
    assert info.value.retry_after_s >= 1.0
    assert sluice_env.client.llen("low") == 0  # refused, not queued to rot
    # nothing queued ahead of HIGH: a HIGH job with the same deadline fits
    assert submit("email.send", {"to": "a@b.io", "subject": "s"}, deadline=1.0).queue == "high"
    # and CRITICAL is never refused for time
    assert submit("audit.record", {"actor": "a", "action": "b"}).queue == "critical"


def test_the_predicted_wait_follows_a_loss_of_capacity(sluice_env: Env,
                                                       processes: Processes) -> None:
    processes.worker(concurrency=1, name="a@test", drain_seconds="1")
    b = processes.worker(concurrency=1, name="b@test", drain_seconds="1")
    producer = default_producer()
    producer.start()
    submit_many("demo.flaky", [{"sleep_s": 0.1}] * 150)  # ~8 s of work for two slots
    wait_for(lambda: _rate() > 14.0, timeout=20, what="two slots draining (~20 jobs/s)")
    before = _rate()
    b.kill()  # half the capacity is gone
    wait_for(lambda: _rate() < 0.8 * before, timeout=8, what="the drain rate following")
    assert producer.monitor.current().wait_for(Priority.NORMAL) > 0
