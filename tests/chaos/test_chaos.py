"""Fault injection with real processes. Each test counts accepted vs completed vs
dead-lettered jobs, and they must add up: nothing accepted is lost.

`make test` runs the short versions; `make chaos` (SLUICE_CHAOS_FULL=1) the long ones.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from delivery.spool import spool_sizes
from dlq.drain import drain_spool
from dlq.store import DeadLetterStore
from producers import InvalidPayload, UnknownTask, submit
from sluice.errors import ConfigError, SluiceError
from sluice.settings import get_settings, load_settings
from tests.chaos.conftest import FAST_RESTORE, FULL, Load, Supervisor, completed, duration, runs
from tests.conftest import Env, Processes, _make_env, reset_all
from tests.services import PostgresServer, RedisServer, wait_for

pytestmark = pytest.mark.chaos
RECONCILE_FAST = dict(reconcile_interval="1", ledger_grace_seconds="3",
                      ledger_confirm_seconds="2")


def _all_done(load: Load) -> bool:
    return load.accepted <= set(completed())


def _where(env: Env, load: Load) -> str:
    """For a failure message: where the accepted-but-not-completed jobs are."""
    import json

    missing = load.accepted - set(completed())
    queued = {json.loads(m)["headers"]["id"] for q in ("critical", "high", "normal", "low")
              for m in env.client.lrange(q, 0, -1) if m.startswith(b"{")}
    unacked = {json.loads(json.loads(v)[0])["headers"]["id"] if isinstance(json.loads(v)[0], str)
               else json.loads(v)[0]["headers"]["id"] for v in env.client.hvals("unacked")}
    from delivery.outbox import OutboxEntry
    from sluice import keys
    from sluice.connections import session_factory

    with session_factory()() as session:
        outboxed = {e.task_id for e in session.query(OutboxEntry).all()}
    ledger = {t for t in missing if env.client.hexists(keys.LEDGER, t)}
    return (f"{len(missing)} missing: {sorted(missing)[:5]}; queued {len(missing & queued)}, "
            f"unacked {len(missing & unacked)}, in the outbox {len(missing & outboxed)}, "
            f"in the ledger {len(ledger)}, nowhere "
            f"{len(missing - queued - unacked - outboxed - ledger)}")


def test_worker_sigkilled_every_few_seconds_loses_nothing(sluice_env: Env,
                                                          processes: Processes,
                                                          load: Load) -> None:
    """A whole worker SIGKILLed can take with it the one job whose BRPOP reply was in
    flight (kombu records it as unacked only after reading it); the ledger and the
    reconcile job (every second here) bring such a job back."""
    processes.beat(**RECONCILE_FAST)
    worker = processes.worker(concurrency=2, **FAST_RESTORE, **RECONCILE_FAST)
    load.run(duration(10))
    kills, deadline = 0, time.monotonic() + duration(10)
    while time.monotonic() < deadline:
        done = len(completed())  # the next kill once the worker is doing work again
        wait_for(lambda done=done: len(completed()) >= done + 20, timeout=30,
                 what=f"jobs completing after kill {kills}")
        children = worker.children()
        if kills % 2 == 0 and children:
            os.kill(children[0], signal.SIGKILL)  # a pool process dies mid-job
        else:
            worker.kill()  # the whole worker dies
            worker = processes.worker(concurrency=2, **FAST_RESTORE, **RECONCILE_FAST)
        kills += 1
    load.wait()
    try:
        wait_for(lambda: _all_done(load), timeout=60, what="every accepted job completed")
    except TimeoutError:
        raise AssertionError(_where(sluice_env, load)) from None
    done = completed()
    assert len(done) == len(set(done))  # effects applied once, despite redeliveries
    assert set(done) == load.accepted and DeadLetterStore().count() == 0
    assert kills >= 3


@pytest.fixture
def aof_redis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    server = RedisServer(tmp_path / "aof-redis", appendonly=True).start()
    env = _make_env(server, f"sqlite:///{tmp_path / 'sluice.db'}", tmp_path, monkeypatch)
    yield env
    reset_all()
    server.stop()


def test_redis_restarted_during_load_loses_no_accepted_job(aof_redis: Env, load: Load) -> None:
    """A job whose BRPOP reply dies with Redis is in the ledger only: beat, which exits
    when Redis goes, must come back (supervised, as deployed) for reconcile to re-send it."""
    procs = Processes(aof_redis)
    beat = Supervisor(lambda: procs.beat(**RECONCILE_FAST))
    try:
        worker = procs.worker(concurrency=2, **FAST_RESTORE, **RECONCILE_FAST)
        load.run(duration(12))
        wait_for(lambda: len(completed()) >= 20, timeout=30,  # the load is running
                 what="jobs completing before the outage")
        refused = len(load.rejected)
        aof_redis.redis.stop()
        wait_for(lambda: len(load.rejected) > refused + 2, timeout=10,  # the outage, felt
                 what="submissions refused while Redis is down")
        aof_redis.redis.start()
        load.wait()
        try:
            wait_for(lambda: _all_done(load), timeout=90, what="every accepted job completed")
        except TimeoutError:
            raise AssertionError(_where(aof_redis, load)) from None
        assert {r.reason for r in load.rejected} <= {"BROKER_UNAVAILABLE"}
        assert load.rejected, "the outage refused some non-CRITICAL submissions"
        assert set(completed()) == load.accepted
        assert worker.alive() and "Unrecoverable error" not in worker.output()
    finally:
        beat.stop()
        procs.stop_all()


def test_redis_restarted_n_times_with_jobs_in_flight_loses_none_runs_none_twice(
        aof_redis: Env, load: Load) -> None:
    """Each restart drops the worker's connection while jobs run in its pool; the same
    worker process must reconnect, ack those jobs, and keep consuming. Nothing accepted is
    lost, and with no worker crash, no job runs twice."""
    restarts = 5 if FULL else 2
    client = aof_redis.client
    procs = Processes(aof_redis)
    beat = Supervisor(lambda: procs.beat(**RECONCILE_FAST))  # reconcile: the ledger
    try:
        worker = procs.worker(concurrency=2, **FAST_RESTORE, **RECONCILE_FAST)
        load.run(600, rate=8, linger_s=0.2)  # stopped after the last restart
        for n in range(restarts):
            wait_for(lambda: client.hlen("unacked") > 0 and load.accepted, timeout=10,
                     what=f"jobs in flight (load errors: {load.errors[:3]})")
            refused = len(load.rejected)
            aof_redis.redis.stop()
            wait_for(lambda refused=refused: len(load.rejected) > refused, timeout=10,
                     what="a submission refused while Redis is down")  # the outage, felt
            aof_redis.redis.start()
            done = len(completed())
            wait_for(lambda done=done: len(completed()) > done + 2, timeout=30,
                     what=f"jobs completing after restart {n + 1}")
        load.stop.set()
        load.wait()
        last = wait_for(lambda: submit("audit.record", {"actor": "chaos", "action": "last"}),
                        timeout=30, what="a submission after the last restart")
        try:
            wait_for(lambda: _all_done(load) and last.task_id in completed(), timeout=90,
                     what="every accepted job completed")
        except TimeoutError:
            raise AssertionError(_where(aof_redis, load)) from None
        assert worker.alive() and "Unrecoverable error" not in worker.output()
        assert not load.errors
        assert load.accepted | {last.task_id} <= set(completed())
        assert set(completed()) <= load.accepted | load.unknown | {last.task_id}
        ran = runs(p.output() for p in procs.started)
        assert [t for t, k in ran.items() if k > 1] == [], "jobs run twice without a crash"
    finally:
        beat.stop()
        procs.stop_all()


def test_postgres_down_while_jobs_fail_every_dead_letter_arrives(
        redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pg = PostgresServer().start()
    try:
        pg.execute("CREATE DATABASE sluice")
        env = _make_env(redis_server, pg.url("sluice"), tmp_path, monkeypatch)
        from dlq.migrate import upgrade

        upgrade()
        procs = Processes(env)
        try:
            procs.worker(concurrency=2, reconcile_interval="1")
            procs.beat(reconcile_interval="1")
            pg.stop()
            receipts = [submit("demo.flaky", {"permanent": True}) for _ in range(40)]
            wait_for(lambda: sum(n or 0 for n in spool_sizes(
                         env.client, get_settings().spool_path).values()) >= len(receipts),
                     timeout=duration(30, 60),  # the outage: every dead letter spooled
                     what="every dead letter spooled while PostgreSQL is down")
            pg.start()
            store = DeadLetterStore()
            wait_for(lambda: store.count() == len(receipts), timeout=60,
                     what="every dead letter in the store (drained by reconcile)")
            assert {r.task_id for r in store.list(limit=100)} == {r.task_id for r in receipts}
        finally:
            procs.stop_all()
    finally:
        reset_all()
        pg.remove()


def test_two_worker_hosts_one_stopped_mid_run_the_other_finishes(sluice_env: Env,
                                                                 processes: Processes,
                                                                 load: Load) -> None:
    processes.beat(**RECONCILE_FAST)  # re-sends a job lost in flight with host a
    host_a = processes.worker(concurrency=1, name="a@host-a", **FAST_RESTORE, **RECONCILE_FAST)
    processes.worker(concurrency=1, name="b@host-b", **FAST_RESTORE, **RECONCILE_FAST)
    load.run(duration(8))
    wait_for(lambda: len({r["pid"] for r in __import__(
        "workers.effects", fromlist=["read"]).read("audit")}) >= 2, timeout=30,
        what="both hosts doing work")
    host_a.kill()
    load.wait()
    try:
        wait_for(lambda: _all_done(load), timeout=60, what="host b finished the work")
    except TimeoutError:
        raise AssertionError(_where(sluice_env, load)) from None
    assert set(completed()) == load.accepted
    pids = {r["pid"] for r in __import__("workers.effects", fromlist=["read"]).read("audit")}
    assert len(pids) >= 2  # both hosts did work before one was stopped


PAYLOADS = st.one_of(st.none(), st.integers(), st.text(max_size=20),
                     st.lists(st.integers(), max_size=3),
                     st.dictionaries(st.sampled_from(["to", "subject", "body", "x", ""]),
                                     st.one_of(st.text(max_size=30), st.integers(),
                                               st.none()), max_size=4))


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(task=st.sampled_from(["email.send", "auth.event", "no.such.task", ""]),
       payload=PAYLOADS, priority=st.sampled_from([None, "LOW", "urgent", 7, "critical"]))
def test_invalid_input_at_the_api_is_refused_cleanly(sluice_env: Env, task: str,
                                                     payload: object, priority: object) -> None:
    client = sluice_env.client
    before = sum(client.llen(q) for q in ("critical", "high", "normal", "low"))
    try:
        receipt = submit(task, payload, priority=priority)  # type: ignore[arg-type]
    except (InvalidPayload, UnknownTask) as exc:
        assert str(exc)
        assert sum(client.llen(q) for q in ("critical", "high", "normal", "low")) == before
    except SluiceError as exc:  # an unknown priority
        assert "priority" in str(exc)
    else:
        assert receipt.task_id and receipt.queue in ("critical", "high", "normal", "low")


def test_a_burst_of_invalid_input_at_every_entry_disturbs_nothing(sluice_env: Env,
                                                                 processes: Processes) -> None:
    processes.worker(concurrency=2)
    # raw queue messages
    for i in range(20):
        sluice_env.client.lpush(["critical", "high", "normal", "low"][i % 4], f"junk {i}")
    # CLI
    for args, code in ((["submit", "email.send", "--payload", "[]"], 2),
                       (["dlq", "show", "x"], 1),  # a task id that is not there
                       (["submit", "", "--payload", "{}"], 2), (["killswitch", "on", ""], 2)):
        out = subprocess.run([sys.executable, "-c", "from ops.cli import main; main()",
                              *args], env=sluice_env.process_env(), capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == code and "Traceback" not in out.stderr, (args, out.stderr)
    # settings
    for bad in ({"pressure_shed": -1}, {"visibility_timeout": "soon"},
                {"pressure_warning": 900, "pressure_critical": 800}):
        with pytest.raises(ConfigError):
            load_settings(**bad)
    # API
    for payload in (None, [], {"to": 1}, "x"):
        with pytest.raises(InvalidPayload):
            submit("email.send", payload)  # type: ignore[arg-type]
    # ...and valid work still flows
    good = submit("audit.record", {"actor": "ok", "action": "after the burst"})
    wait_for(lambda: good.task_id in completed(), timeout=30, what="a valid job after junk")
    store = DeadLetterStore()
    drain_spool(store, sluice_env.client, get_settings().spool_path)
    assert store.count() == 20  # one dead letter per junk message, nothing else
