"""A dead worker's jobs come back within seconds (issue: not after the visibility timeout),
once each; a live worker's jobs are never taken from it, however long they run."""

from __future__ import annotations

import time

from delivery.ledger import recover_lost
from producers import submit
from sluice import keys
from tests.conftest import Env, Processes
from tests.services import wait_for
from workers import effects


def _attempts(task_id: str) -> list[dict[str, object]]:
    return [r for r in effects.read("flaky") if r["task_id"] == task_id]


def test_a_killed_workers_job_starts_on_another_worker_within_30_s_once(
        sluice_env: Env, processes: Processes) -> None:
    a = processes.worker(concurrency=1, name="a@test")
    held = submit("demo.flaky", {"sleep_s": 120}, priority="CRITICAL")
    wait_for(lambda: _attempts(held.task_id), timeout=20, what="the job running on a")
    assert sluice_env.client.scard(keys.held("a@test")) == 1
    processes.worker(concurrency=1, name="b@test", drain_seconds="1")  # default heartbeats
    killed_at = time.monotonic()
    a.kill()  # the whole worker: main process and pool
    wait_for(lambda: len(_attempts(held.task_id)) == 2, timeout=40,
             what="the job restarted on b")
    assert time.monotonic() - killed_at < 30
    first, second = _attempts(held.task_id)
    assert first["pid"] != second["pid"]
    assert int(sluice_env.client.hget(keys.RECOVERED, "critical") or 0) == 1
    assert sluice_env.client.llen("critical") == 0  # not queued a second time


def test_a_job_lost_in_flight_on_its_redelivery_is_resent(sluice_env: Env,
                                                          processes: Processes) -> None:
    """`make chaos` lost a job so: its worker was killed mid-job, the job was put back on
    its queue, and the worker that BRPOPped it was killed in turn before kombu recorded it
    (the window the ledger closes). The ledger had let go of the job at its first start, so
    nothing knew it existed. It keeps a job until it ends."""
    client = sluice_env.client
    a = processes.worker(concurrency=1, name="a@test")
    job = submit("demo.flaky", {"sleep_s": 3}, priority="CRITICAL")
    wait_for(lambda: _attempts(job.task_id), timeout=20, what="the job running on a")
    assert client.hexists(keys.LEDGER, job.task_id)  # running: still in the ledger
    a.kill()
    # put back and lost in flight: in no queue, in no worker's hands
    client.delete(keys.KOMBU_UNACKED, keys.KOMBU_UNACKED_INDEX, keys.held("a@test"))
    now = time.time() + 31  # past the reconcile grace: seen missing, then confirmed
    assert recover_lost(client, now) == 0 and recover_lost(client, now + 6) == 1
    processes.worker(concurrency=1, name="b@test")
    wait_for(lambda: len(_attempts(job.task_id)) == 2, timeout=20, what="the job re-run")
    wait_for(lambda: not client.hexists(keys.LEDGER, job.task_id), timeout=20,
             what="the job out of the ledger once it ended")


def test_a_killed_workers_reserved_job_is_restored_too(sluice_env: Env,
                                                       processes: Processes) -> None:
    short = dict(worker_heartbeat_interval="1", worker_heartbeat_ttl="3", drain_seconds="1")
    a = processes.worker(concurrency=1, name="a@test", **short)
    waiting = submit("demo.flaky", {"sleep_s": 0}, countdown=60)  # held as an ETA job
    wait_for(lambda: sluice_env.client.scard(keys.held("a@test")) == 1, timeout=20,
             what="a holding the ETA job")
    running = submit("demo.flaky", {"sleep_s": 120})
    wait_for(lambda: _attempts(running.task_id), timeout=20, what="a busy")
    assert sluice_env.client.scard(keys.held("a@test")) == 2
    processes.worker(concurrency=1, name="b@test", **short)
    a.kill()
    wait_for(lambda: len(_attempts(running.task_id)) == 2, timeout=20, what="restarted on b")
    client = sluice_env.client

    def handed_over() -> bool:  # a's holdings gone; the ETA job queued again, or held by b
        tid = waiting.task_id.encode()
        queued = tid in b"".join(client.lrange("normal", 0, -1))
        held = tid in b"".join(client.hvals(keys.KOMBU_UNACKED))
        return not client.exists(keys.held("a@test")) and (queued or held)

    wait_for(handed_over, timeout=20, what="the ETA job back on its queue (or held by b)")
    assert not _attempts(waiting.task_id)  # still waiting for its countdown


def test_a_live_worker_keeps_a_job_longer_than_three_ttls(sluice_env: Env,
                                                          processes: Processes) -> None:
    short = dict(worker_heartbeat_interval="0.5", worker_heartbeat_ttl="1.5",
                 drain_seconds="1")
    processes.worker(concurrency=1, name="a@test", **short)
    processes.worker(concurrency=1, name="b@test", **short)
    job = submit("demo.flaky", {"sleep_s": 5})  # > 3 x the TTL
    wait_for(lambda: effects.read("flaky") and len(_attempts(job.task_id)) == 1, timeout=20,
             what="the job started")
    wait_for(lambda: not sluice_env.client.hexists(keys.KOMBU_UNACKED, "x") and
             sluice_env.client.hlen(keys.KOMBU_UNACKED) == 0, timeout=30,
             what="the job acked")
    assert len(_attempts(job.task_id)) == 1
    assert not sluice_env.client.hgetall(keys.RECOVERED)
