"""Scheduled jobs on real celery beat + worker processes, and with a stepped clock."""

from __future__ import annotations

import datetime as dt
import time

from delivery.outbox import add_to_outbox, outbox_size
from delivery.spool import spool_to_file
from dlq.models import Status
from dlq.replay import replay_one
from dlq.store import DeadLetterStore
from producers import default_producer
from schedules.beat import build_schedule
from schedules.jobs import run_purge, run_retry
from schedules.retry import next_retry
from schedules.status import schedule_rows
from sluice import keys
from sluice.settings import get_settings, load_settings
from tests.conftest import Env, Processes
from tests.services import wait_for
from tests.test_dlq_store import rec

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
MIN = dt.timedelta(minutes=1)
BEAT = dict(reconcile_interval="1", dlq_retry_interval="1", dlq_purge_interval="1",
            beat_lock_timeout="3")


def _runs(env: Env, job: str) -> int:
    return int(env.client.hget(keys.SCHEDULE_RUNS, f"{job}:runs") or 0)


def test_schedule_comes_from_settings() -> None:
    s = load_settings(reconcile_interval=7, dlq_retry_interval=8, dlq_purge_interval=9)
    sched = build_schedule(s)
    assert {k: v["schedule"] for k, v in sched.items()} == {
        "reconcile": 7.0, "retry-dead-letters": 8.0, "purge-dead-letters": 9.0}
    assert sched["reconcile"]["options"]["queue"] == "critical"


def test_two_beats_fire_each_job_once_per_tick_and_the_other_takes_over(
        sluice_env: Env, processes: Processes) -> None:
    processes.worker(concurrency=2, **BEAT)
    beats = [processes.beat(f"beat{i}", **BEAT) for i in range(2)]
    wait_for(lambda: _runs(sluice_env, "reconcile") >= 1, timeout=30, what="first tick")
    start = {job: _runs(sluice_env, job) for job in ("reconcile", "retry-dead-letters",
                                                     "purge-dead-letters")}
    began = time.monotonic()  # the measurement window: ten 1 s intervals of reconcile
    wait_for(lambda: _runs(sluice_env, "reconcile") - start["reconcile"] >= 10, timeout=20,
             what="ten reconcile runs")
    assert 9 <= time.monotonic() - began <= 11  # once per tick, not twice (two beats)
    for job, before in start.items():
        assert 9 <= _runs(sluice_env, job) - before <= 11, (job, _runs(sluice_env, job) - before)
    holder = next(b for b in beats if "Acquired lock" in b.output() or "acquired" in
                  b.output().lower())
    holder.kill()
    killed_at = _runs(sluice_env, "reconcile")
    # lock timeout 3 s: the other beat fires again within it (+ one interval of slack)
    wait_for(lambda: _runs(sluice_env, "reconcile") >= killed_at + 2, timeout=3 + 1 + 5,
             what="the surviving beat takes over")
    rows = {r["job"]: r for r in schedule_rows(time.time())}
    assert rows["reconcile"]["runs"] >= 10 and rows["reconcile"]["last_run"]
    assert rows["reconcile"]["last_outcome"]["drained"] == 0


def test_reconcile_drains_the_spools_and_flushes_the_outbox(sluice_env: Env,
                                                            processes: Processes) -> None:
    settings = get_settings()
    for i in range(5):
        sluice_env.client.rpush(keys.DLQ_SPOOL, rec(f"redis-{i}").to_json())
        spool_to_file(rec(f"file-{i}"), settings.spool_path)
    for i in range(3):
        add_to_outbox(f"crit-{i}", "audit.record", "critical",
                      {"actor": "a", "action": str(i)}, {"sluice_priority": "CRITICAL"})
    processes.worker(concurrency=2, **BEAT)
    processes.beat(**BEAT)
    store = DeadLetterStore()
    wait_for(lambda: store.count() == 10 and outbox_size() == 0, timeout=30,
             what="spools drained and outbox flushed")
    from workers import effects

    wait_for(lambda: len(effects.read("audit")) == 3, what="outboxed CRITICAL jobs ran")
    assert sluice_env.client.llen(keys.DLQ_SPOOL) == 0
    assert settings.spool_path.read_text() == ""


def test_next_retry_grows_and_stops_at_the_horizon() -> None:
    base, horizon = 900.0, 86400.0
    assert next_retry(T0, None, 0, T0 + 14 * MIN, base, horizon).action == "wait"
    d = next_retry(T0, None, 0, T0 + 15 * MIN, base, horizon)
    assert d.action == "replay" and d.next_at == T0 + 45 * MIN  # then 30 min later
    d = next_retry(T0, T0 + 45 * MIN, 1, T0 + 45 * MIN, base, horizon)
    assert d.action == "replay" and d.next_at == T0 + 105 * MIN  # then 1 h later
    assert next_retry(T0, None, 5, T0 + dt.timedelta(hours=24), base, horizon).action == \
        "exhaust"


def test_a_retryable_dead_letter_is_replayed_at_growing_delays_then_exhausted(
        store_env: Env) -> None:
    store = DeadLetterStore(retry_base_s=900)
    store.record(rec("x", task="demo.flaky", at=T0.timestamp()))
    from sqlalchemy import update

    from dlq.models import DeadLetter

    with store.engine.begin() as conn:
        conn.execute(update(DeadLetter).values(payload={"fail_times": 0}))
    replays, now = [], T0
    while now < T0 + dt.timedelta(hours=25):
        now += MIN
        out = run_retry(now)
        if out["replayed"]:
            replays.append(now)
            # the replayed job fails again: the worker records it under the original id,
            # one generation up
            generation = store.get_by_task_id("x").replay_count
            store.record(rec("x", task="demo.flaky", at=now.timestamp() + 1,
                             generation=generation))
        if out["exhausted"]:
            break
    gaps = [(b - a) / MIN for a, b in zip(replays, replays[1:], strict=False)]
    assert (replays[0] - T0) / MIN == 15
    assert gaps == [30, 60, 120, 240, 480]  # 15 min, 30 min, 1 h, 2 h, ...
    assert len(replays) == 6 and (now - T0) / MIN == 24 * 60  # exhausted at the horizon
    row = store.get_by_task_id("x")
    assert row.status == Status.EXHAUSTED.value and now >= T0 + dt.timedelta(hours=24)
    assert row.replay_count == len(replays)


def test_permanent_failures_are_never_auto_retried(store_env: Env) -> None:
    store = DeadLetterStore()
    store.record(rec("p", reason="PERMANENT", at=T0.timestamp()))
    for hours in (1, 5, 30):
        assert run_retry(T0 + dt.timedelta(hours=hours)) == {
            "replayed": 0, "rejected": 0, "exhausted": 0, "errors": 0}
    assert store.get_by_task_id("p").status == "pending"


def test_purge_removes_exactly_the_rows_past_retention(store_env: Env) -> None:
    store = DeadLetterStore()
    store.record_many([rec(f"k{i}") for i in range(6)])
    ids = [store.get_by_task_id(f"k{i}").id for i in range(6)]
    store.discard(ids[:2])
    store.set_status(ids[2:4], Status.REPLAYED)
    store.set_status(ids[4:5], Status.EXHAUSTED)
    now = dt.datetime.now(dt.UTC)
    assert run_purge(now + dt.timedelta(days=6))["purged"] == 0
    assert run_purge(now + dt.timedelta(days=8))["purged"] == 4
    assert {r.task_id for r in store.list()} == {"k4", "k5"}


def test_a_dead_letter_failing_again_after_a_manual_replay_is_retried_again(
        store_env: Env) -> None:
    store = DeadLetterStore(retry_base_s=900)
    flaky = {"fail_times": 0}
    store.record(rec("m", task="demo.flaky", payload=flaky, at=T0.timestamp()))
    replay_one(store, default_producer(), store.get_by_task_id("m").id)  # by hand: no schedule
    failed_again = T0 + 5 * MIN
    store.record(rec("m", task="demo.flaky", payload=flaky, at=failed_again.timestamp(),
                     generation=1, attempts=1))
    row = store.get_by_task_id("m")
    assert row.status == "pending" and row.next_retry_at is not None
    assert run_retry(failed_again + 15 * MIN)["replayed"] == 1
