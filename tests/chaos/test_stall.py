"""Redis stalls (CLIENT PAUSE) while producers submit and workers run: every receipt is the
truth. An accepted job runs exactly once; nothing that was refused ever runs."""

from __future__ import annotations

import pytest

from tests.chaos.conftest import FAST_RESTORE, FULL, Load, completed, duration
from tests.conftest import Env, Processes
from tests.services import wait_for

pytestmark = pytest.mark.chaos


def test_redis_paused_during_submissions_every_receipt_is_honest(
        sluice_env: Env, processes: Processes, load: Load,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.conftest import reset_all

    monkeypatch.setenv("SLUICE_REDIS_SOCKET_TIMEOUT", "0.3")  # producers give up mid-pause
    reset_all()
    processes.worker(concurrency=2, **FAST_RESTORE)
    load.run(duration(8, 30), rate=60)
    pauses = 5 if FULL else 2
    for n in range(pauses):
        done = len(completed())  # the chaos schedule: a pause once jobs flow again
        wait_for(lambda done=done: len(completed()) >= done + 20, timeout=30,
                 what=f"jobs completing before pause {n + 1}")
        sluice_env.client.client_pause(1200)
    load.wait()
    wait_for(lambda: load.accepted <= set(completed()), timeout=60,
             what="every accepted job completed")
    done = completed()
    assert len(done) == len(set(done)), "a job ran twice"
    assert set(done) == load.accepted, "a job ran that the caller was told was refused"
    assert {r.reason for r in load.rejected} <= {"BROKER_UNAVAILABLE"}


def test_workers_stalled_for_seconds_refuse_nothing_with_minutes_to_spare(
        sluice_env: Env, processes: Processes, load: Load) -> None:
    """Workers that stop starting jobs for two seconds (CPU starvation, a GC pause, a
    stopped host) under a light load: the backlog is a second of work for them, and every
    deadline is minutes away, so the gate refuses nothing. It refused NORMAL and LOW jobs
    as late (DEADLINE) when it read the stall as a collapse of capacity and the steady
    offer as an overload, and went on refusing while its own refusals kept the queues
    short (a CI run of the Redis-pause test above, under the full suite's load)."""
    import os
    import signal

    from sluice.priorities import QUEUES

    worker = processes.worker(concurrency=2)
    load.run(duration(8, 30), rate=60)
    wait_for(lambda: len(completed()) >= 20, timeout=30, what="jobs flowing")
    stalled = [worker.pid, *worker.children()]
    for pid in stalled:
        os.kill(pid, signal.SIGSTOP)
    try:  # the stall lasts until two seconds of the offer wait behind it
        wait_for(lambda: sum(sluice_env.client.llen(q) for q in QUEUES) >= 100, timeout=30,
                 what="a backlog behind the stalled workers")
    finally:
        for pid in stalled:
            os.kill(pid, signal.SIGCONT)
    load.wait()
    wait_for(lambda: load.accepted <= set(completed()), timeout=60,
             what="every accepted job completed")
    assert not load.errors and not load.unknown
    assert [r.reason for r in load.rejected] == []
