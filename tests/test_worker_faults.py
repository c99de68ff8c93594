"""Faults around a running worker, with real processes on a real Redis: a Redis restart
mid-job, malformed envelopes on a queue, jobs that never start, the readiness heartbeat,
a hard time limit."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sluice import keys
from sluice.message import H_GENERATION, H_KEY, H_ORIGIN, H_PRIORITY
from sluice.settings import get_settings
from tests.conftest import Env, Processes, _make_env, reset_all
from tests.services import RedisServer, wait_for
from workers import effects

#: worker settings under which a dead worker's jobs come back within seconds
FAST_RESTORE = dict(visibility_timeout="8", retry_backoff_max="1", task_time_limit="6",
                    task_soft_time_limit="5", unacked_restore_interval="1",
                    unacked_restore_throttle="1")


def _audited() -> list[str]:
    return [r["task_id"] for r in effects.read("audit")]


def stock_apply(name: str, payload: dict, **options: object) -> None:
    """A plain Celery `apply_async` (no producer API: any headers, no ledger entry)."""
    from sluice.app import app

    app.loader.import_default_modules()
    with app.connection_for_write(get_settings().redis_url.get_secret_value()) as conn:
        app.tasks[name].apply_async(args=[payload], connection=conn, **options)


def _dead(task_id: str) -> list:
    from dlq.store import DeadLetterStore

    return [r for r in DeadLetterStore().list(limit=1000) if r.task_id == task_id]


@pytest.fixture
def restartable_redis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    """A Redis of this test's own (append-only, so a restart keeps the data)."""
    server = RedisServer(tmp_path / "own-redis", appendonly=True).start()
    env = _make_env(server, f"sqlite:///{tmp_path / 'sluice.db'}", tmp_path, monkeypatch)
    yield env
    reset_all()
    server.stop()


def test_a_worker_rides_through_a_redis_restart_with_a_job_unacked(
        restartable_redis: Env) -> None:
    from producers import submit

    env = restartable_redis
    procs = Processes(env)
    try:
        # two slots: one runs the held job, the other waits in BRPOP as the connection
        # drops (kombu then closes the channel twice, the second time with no connection)
        worker = procs.worker(concurrency=2, **FAST_RESTORE)
        held = submit("demo.flaky", {"sleep_s": 3})
        wait_for(lambda: effects.read("flaky"), what="job running")
        assert env.client.hlen("unacked") == 1  # the job is unacked as Redis goes away
        env.redis.stop()
        env.redis.start()
        after = wait_for(lambda: submit("audit.record", {"actor": "a", "action": "after"}),
                         timeout=30, what="a submission accepted after the restart")
        wait_for(lambda: after.task_id in _audited() or not worker.alive(), timeout=30,
                 what="a job submitted after the restart completed")
        assert worker.alive(), worker.output()[-3000:]
        assert "Unrecoverable error" not in worker.output()
        wait_for(lambda: env.client.hlen("unacked") == 0, timeout=30,
                 what="nothing left unacked (the held job acked after the reconnect)")
        assert [r["task_id"] for r in effects.read("flaky")] == [held.task_id]  # ran once
        assert _audited() == [after.task_id]
    finally:
        procs.stop_all()


def test_a_job_finished_while_redis_is_down_is_acked_when_it_is_back_not_rerun(
        restartable_redis: Env) -> None:
    from producers import submit

    env = restartable_redis
    procs = Processes(env)
    try:
        worker = procs.worker(concurrency=1, **FAST_RESTORE)
        job = submit("demo.flaky", {"sleep_s": 1})
        wait_for(lambda: effects.read("flaky"), what="job running")
        env.redis.stop()
        wait_for(lambda: f"demo.flaky[{job.task_id}] succeeded" in worker.output(),
                 what="the job finished during the outage")
        env.redis.start()
        # kombu would restore the unacked message after the visibility timeout (8 s here)
        # and run it again; the deferred ack removes it first
        wait_for(lambda: env.client.hlen("unacked") == 0 and env.client.llen("normal") == 0,
                 timeout=30, what="the job acked")
        assert [r["task_id"] for r in effects.read("flaky")] == [job.task_id]
        assert worker.alive()
    finally:
        procs.stop_all()


#: items that are JSON objects with a body and properties, yet no kombu message
BAD_ENVELOPES = [
    {"body": "e30=", "properties": {"body_encoding": "base64"}, "headers": {}},  # no tag
    {"body": "e30=", "properties": {"body_encoding": "base64", "delivery_tag": "t2"},
     "headers": {}},  # no delivery_info
    {"body": "e30=", "properties": {"body_encoding": "rot13", "delivery_tag": "t3",
                                    "delivery_info": {"exchange": "sluice",
                                                      "routing_key": "low"}}},
    {"body": "not base64!", "properties": {"body_encoding": "base64", "delivery_tag": "t4",
                                           "delivery_info": {"exchange": "sluice",
                                                             "routing_key": "low"}}},
    {"body": "e30=", "properties": {"body_encoding": "base64", "delivery_tag": "t5",
                                    "delivery_info": "low"}, "headers": {}},
    {"body": "e30=", "properties": {"body_encoding": "base64", "delivery_tag": "t6",
                                    "delivery_info": {"exchange": "sluice",
                                                      "routing_key": "low"}},
     "headers": ["not", "a", "dict"]},
]


def test_malformed_envelopes_are_dead_lettered_and_never_rerun_a_running_job(
        sluice_env: Env, processes: Processes) -> None:
    from dlq.store import DeadLetterStore
    from producers import submit

    worker = processes.worker(concurrency=2)  # one slot runs the job, one reads the queue
    held = submit("demo.flaky", {"sleep_s": 3}, idempotency_key="held-1")
    wait_for(lambda: effects.read("flaky"), what="keyed job started")
    for item in BAD_ENVELOPES:
        sluice_env.client.lpush("low", json.dumps(item))
    store = DeadLetterStore()  # in the store at once: no reconcile runs in this test
    wait_for(lambda: store.count() == len(BAD_ENVELOPES), timeout=20,
             what=f"{len(BAD_ENVELOPES)} dead letters\n{worker.output()[-3000:]}")
    wait_for(lambda: sluice_env.client.exists(keys.done("held-1")), timeout=20,
             what="keyed job completed")
    after = submit("analytics.track", {"event": "after-bad-envelopes"})
    wait_for(lambda: effects.read("analytics"), timeout=20, what="a later job ran")
    assert worker.alive() and "Unrecoverable error" not in worker.output()
    assert [r["task_id"] for r in effects.read("flaky")] == [held.task_id]  # ran once
    rows = store.list(limit=100)
    assert {r.reason for r in rows} == {"MALFORMED_MESSAGE"}
    assert {r.queue for r in rows} == {"low"} and after.task_id not in {r.task_id for r in rows}
    assert sluice_env.client.llen(keys.DLQ_SPOOL) == 0


def test_a_job_revoked_before_it_starts_leaves_the_ledger_and_never_runs(
        sluice_env: Env, processes: Processes) -> None:
    from celery import Celery

    from delivery import ledger
    from producers import submit

    client = sluice_env.client
    worker = processes.worker(concurrency=1)
    busy = submit("audit.record", {"actor": "a", "action": "busy", "linger_s": 2})
    wait_for(lambda: busy.task_id in _audited(), what="the only slot busy")
    revoked = submit("audit.record", {"actor": "a", "action": "revoked"})
    # a plain app on this test's Redis (sluice.app.app keeps the broker of its import)
    Celery("revoker", broker=get_settings().redis_url.get_secret_value(),
           set_as_current=False).control.revoke(revoked.task_id)
    wait_for(lambda: client.llen("critical") == 0 and client.hlen("unacked") == 0,
             timeout=20, what="the revoked job taken and dropped")
    # Celery acks a revoked job before it sends `task_revoked`, whose hook takes it out of
    # the ledger: an empty unacked set does not mean that has happened yet
    wait_for(lambda: not client.hexists(keys.LEDGER, revoked.task_id), timeout=10,
             what="the revoked job out of the ledger")
    worker.stop()  # the worker's memory of the revoke goes with it
    later = time.time() + 120  # as reconcile would, long after the grace
    assert ledger.recover_lost(client, now=later, grace_s=1, confirm_s=1) == 0
    assert ledger.recover_lost(client, now=later + 1, grace_s=1, confirm_s=1) == 0
    processes.worker(concurrency=1)
    sentinel = submit("audit.record", {"actor": "a", "action": "after the restart"})
    wait_for(lambda: sentinel.task_id in _audited(), timeout=20, what="a later job ran")
    assert revoked.task_id not in _audited()


def test_the_readiness_key_is_a_heartbeat_renewed_while_alive_gone_after_a_kill(
        sluice_env: Env, processes: Processes) -> None:
    from ops.doctor import worker_state

    interval, ttl = 2, 8  # short, for the test (SLUICE_WORKER_HEARTBEAT_*)
    client, key = sluice_env.client, keys.worker_state("hb@test")
    worker = processes.worker(name="hb@test", worker_heartbeat_interval=str(interval),
                              worker_heartbeat_ttl=str(ttl))
    ttl_ms = ttl * 1000
    assert 0 < client.pttl(key) <= ttl_ms
    aged = wait_for(lambda: (p := client.pttl(key)) < ttl_ms - 1500 and p,
                    timeout=interval + 2, what="the key ageing")
    wait_for(lambda: client.pttl(key) > aged + 1000, timeout=interval + 2,
             what="the heartbeat renewing the key")
    assert worker_state("hb@test") == "ready"
    worker.kill()
    wait_for(lambda: not client.exists(key), timeout=ttl + 2,
             what="the key expiring after the worker died")
    assert worker_state("hb@test") == "unknown"


def test_a_job_killed_by_the_hard_time_limit_keeps_its_priority_and_origin(
        sluice_env: Env, processes: Processes) -> None:
    processes.worker()
    # Celery arms the hard limit when the soft one fires: equal limits kill the job while
    # the soft one is still being handled in it, the way a job that ignores it is killed
    stock_apply("demo.flaky", {"sleep_s": 30}, task_id="timed-out-2", queue="low",
                time_limit=1, soft_time_limit=1,
                headers={H_PRIORITY: "LOW", H_ORIGIN: "origin-1", H_GENERATION: 1})
    from dlq.store import DeadLetterStore

    row = wait_for(lambda: DeadLetterStore().list(limit=10), timeout=20,
                   what="dead letter")[0]
    assert row.exc_type == "TimeLimitExceeded"
    assert (row.priority, row.queue, row.task_id) == ("LOW", "low", "origin-1")
    assert (row.generation, row.effect_key) == (1, "origin-1")


def test_a_dead_letter_carries_generation_effect_key_and_the_sealed_payload(
        sluice_env: Env, processes: Processes) -> None:
    from cryptography.fernet import Fernet

    key = Fernet.generate_key()
    processes.worker(secret_key=key.decode())
    payload = {"to": "not-an-address", "subject": "s", "smtp_password": "hunter2"}
    stock_apply("email.send", payload, task_id="replay-3", queue="high",
                headers={H_ORIGIN: "orig-3", H_GENERATION: 2, H_KEY: "key-3"})
    [row] = wait_for(lambda: _dead("orig-3"), what="dead letter")
    assert (row.generation, row.effect_key) == (2, "key-3")
    assert row.payload["smtp_password"] == "***"
    sealed = json.loads(row.sealed)  # the payload as it travelled, its secret sealed
    token = sealed.pop("smtp_password").removeprefix("sluice-sealed:")
    assert json.loads(Fernet(key).decrypt(token.encode())) == payload["smtp_password"]
    assert sealed == {k: v for k, v in payload.items() if k != "smtp_password"}
    stock_apply("email.send", {"to": "bad", "subject": "no secret"}, task_id="plain-3")
    [plain] = wait_for(lambda: _dead("plain-3"), what="dead letter without secrets")
    assert plain.sealed is None and plain.effect_key == "plain-3" and plain.generation == 0


def test_a_replayed_job_keeps_its_original_effect_key(sluice_env: Env,
                                                      processes: Processes) -> None:
    processes.worker()
    stock_apply("audit.record", {"actor": "a", "action": "replayed"}, task_id="replay-4",
                headers={H_ORIGIN: "orig-4"})
    [effect] = wait_for(lambda: effects.read("audit"), what="effect applied")
    assert (effect["task_id"], effect["key"]) == ("replay-4", "orig-4")
