"""Workers, as real processes on a real Redis: retries, dead letters, at-most-once effects,
drain on SIGTERM, garbage on the queues, expired jobs."""

from __future__ import annotations

import json
import signal

import pytest

from dlq.drain import drain_spool
from dlq.store import DeadLetterStore, Filters
from producers import Priority, submit
from sluice import keys
from sluice.connections import redis_client
from sluice.settings import get_settings
from tests.conftest import Env, Processes
from tests.services import wait_for
from workers import effects

FAST = dict(retry_backoff_base="1", retry_jitter="false")


def _attempts(task_id: str) -> list[dict]:
    return [r for r in effects.read("flaky") if r["task_id"] == task_id]


def stock_apply(name: str, payload: dict, **options: object) -> None:
    """A plain Celery `apply_async` (bypassing the producer API) to the test's Redis."""
    from sluice.app import app

    app.loader.import_default_modules()
    with app.connection_for_write(get_settings().redis_url.get_secret_value()) as conn:
        app.tasks[name].apply_async(args=[payload], connection=conn, **options)


def _dead(task_id: str):  # noqa: ANN202
    rows = [r for r in DeadLetterStore().list(limit=1000) if r.task_id == task_id]
    return rows


def test_transient_failures_retry_with_exponential_gaps_then_succeed(
        sluice_env: Env, processes: Processes) -> None:
    processes.worker(**FAST)
    receipt = submit("demo.flaky", {"fail_times": 3})
    wait_for(lambda: len(_attempts(receipt.task_id)) == 4, timeout=40, what="4 attempts")
    times = [r["at"] for r in _attempts(receipt.task_id)]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    for n, gap in enumerate(gaps):  # base 1 s, no jitter: 1, 2, 4 s (+ scheduling slack)
        assert 2 ** n - 0.05 <= gap <= 2 ** n + 1.5, gaps
    assert [r["attempt"] for r in _attempts(receipt.task_id)] == [1, 2, 3, 4]
    wait_for(lambda: redis_client().hget(keys.RETRIES, "demo.flaky") == b"3",
             what="3 retries counted")
    assert _dead(receipt.task_id) == []


def test_full_jitter_keeps_each_gap_within_its_bound(sluice_env: Env,
                                                     processes: Processes) -> None:
    processes.worker(retry_backoff_base="1")
    receipt = submit("demo.flaky", {"fail_times": 3})
    wait_for(lambda: len(_attempts(receipt.task_id)) == 4, timeout=40, what="4 attempts")
    times = [r["at"] for r in _attempts(receipt.task_id)]
    for n, gap in enumerate(b - a for a, b in zip(times, times[1:], strict=False)):
        assert 0 <= gap <= 2 ** n + 1.5


def test_permanent_failure_is_one_dead_letter_without_retry(sluice_env: Env,
                                                           processes: Processes) -> None:
    processes.worker(**FAST)
    receipt = submit("demo.flaky", {"permanent": True}, priority=Priority.HIGH)
    [row] = wait_for(lambda: _dead(receipt.task_id), what="dead letter")
    assert row.reason == "PERMANENT" and not row.retryable and row.attempts == 1
    assert row.exc_type == "PermanentError" and "Traceback" in row.traceback
    assert row.priority == "HIGH" and row.queue == "high"  # the submitted priority is kept
    assert row.payload == {"permanent": True}
    assert len(_attempts(receipt.task_id)) == 1


def test_exhausted_retries_are_one_dead_letter_with_the_attempt_count(
        sluice_env: Env, processes: Processes) -> None:
    processes.worker(retry_backoff_base="0")
    receipt = submit("demo.flaky", {"fail_times": 100}, priority=Priority.LOW)
    [row] = wait_for(lambda: _dead(receipt.task_id), timeout=30, what="dead letter")
    assert row.reason == "EXHAUSTED" and row.retryable
    # the retry policy is the task's (demo.flaky is NORMAL: 5 retries); the queue is the
    # submitted priority's, kept across retries
    assert row.attempts == 6 == len(_attempts(receipt.task_id))
    assert row.priority == "LOW" and row.queue == "low"
    assert row.exc_type == "TransientFailure"


def test_secret_payload_fields_are_masked_in_the_dead_letter(sluice_env: Env,
                                                            processes: Processes) -> None:
    worker = processes.worker()
    stock_apply("email.send", {"to": "not-an-address", "subject": "s",
                               "smtp_password": "hunter2-secret"}, task_id="secret-1")
    [row] = wait_for(lambda: _dead("secret-1"), what="dead letter")
    assert row.payload == {"to": "not-an-address", "subject": "s", "smtp_password": "***"}
    assert "hunter2-secret" not in json.dumps(row.as_dict(), default=str)
    assert "hunter2-secret" not in worker.output()


def test_invalid_payload_in_the_message_is_dead_lettered(sluice_env: Env,
                                                        processes: Processes) -> None:
    processes.worker()
    # a stock apply_async bypasses the producer's validation: the worker must catch it
    stock_apply("email.send", {"to": "nobody"}, task_id="bad-payload-1")
    [row] = wait_for(lambda: _dead("bad-payload-1"), what="dead letter")
    assert row.reason == "INVALID_PAYLOAD" and not row.retryable
    assert "subject" in row.exc_message


def test_kill_9_after_the_effect_applies_it_once(sluice_env: Env, processes: Processes) -> None:
    fast_restore = dict(visibility_timeout="8", retry_backoff_max="1", task_time_limit="6",
                        task_soft_time_limit="5", unacked_restore_interval="1",
                        unacked_restore_throttle="1")
    worker = processes.worker(**fast_restore)
    receipt = submit("audit.record", {"actor": "a", "action": "x", "linger_s": 4},
                     idempotency_key="audit-1")
    wait_for(lambda: len(effects.read("audit")) == 1, what="effect applied")
    worker.kill()
    second = processes.worker(record_waits="1", **fast_restore)
    wait_for(lambda: redis_client().exists(keys.done("audit-1")), timeout=60,
             what="redelivered job completed")
    assert len(effects.read("audit")) == 1
    assert [r["task_id"] for r in effects.read("audit")] == [receipt.task_id]
    assert "effect already applied" in second.output()


def test_a_completed_keyed_job_redelivered_is_skipped(sluice_env: Env,
                                                     processes: Processes) -> None:
    processes.worker()
    receipt = submit("auth.event", {"user_id": "u1", "kind": "login"}, idempotency_key="k-1")
    wait_for(lambda: redis_client().exists(keys.done("k-1")), what="first run done")
    # the broker hands the same message out again (as after a lost ack)
    stock_apply("auth.event", {"user_id": "u1", "kind": "login"}, task_id=receipt.task_id,
                headers={"sluice_key": "k-1"})
    submit("auth.event", {"user_id": "u2", "kind": "login"})
    wait_for(lambda: len(effects.read("auth")) >= 2, what="later job ran")
    assert [r["user_id"] for r in effects.read("auth")] == ["u1", "u2"]


def test_sigterm_during_a_short_job_drains_it_and_exits_0(sluice_env: Env,
                                                          processes: Processes) -> None:
    from ops.doctor import worker_state

    worker = processes.worker(record_waits="1", drain_seconds="25", name="drain1@test")
    submit("analytics.track", {"event": "e", "work_s": 3})
    wait_for(lambda: sluice_env.client.llen(keys.waits("LOW")), what="job started")
    worker.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: worker_state("drain1@test") == "shutting down", what="readiness flips")
    assert worker.proc.wait(60) == 0
    assert len(effects.read("analytics")) == 1
    assert sluice_env.client.llen("low") == 0 and sluice_env.client.hlen("unacked") == 0


def test_sigterm_during_a_job_longer_than_the_drain_requeues_it(sluice_env: Env,
                                                               processes: Processes) -> None:
    worker = processes.worker(record_waits="1", drain_seconds="2")
    submit("analytics.track", {"event": "long", "work_s": 8})
    wait_for(lambda: sluice_env.client.llen(keys.waits("LOW")), what="job started")
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(60) == 0
    assert effects.read("analytics") == []
    assert sluice_env.client.llen("low") == 1  # back in its queue, not lost
    processes.worker()
    wait_for(lambda: len(effects.read("analytics")) == 1, timeout=30,
             what="job completed on the next worker")


GARBAGE = [b"\x00\xff\xfe not json", b"{\"just\": \"json\"}", b"[1, 2, 3]",
           b"{\"body\": \"eA==\", \"headers\": {}, \"content-type\": \"application/json\", "
           b"\"content-encoding\": \"utf-8\", \"properties\": {\"delivery_tag\": \"t1\", "
           b"\"body_encoding\": \"base64\", \"delivery_info\": {\"exchange\": \"sluice\", "
           b"\"routing_key\": \"low\"}}}"]


def test_garbage_on_every_queue_is_dead_lettered_and_the_worker_keeps_serving(
        sluice_env: Env, processes: Processes) -> None:
    for queue in ("critical", "high", "normal", "low"):
        for item in GARBAGE:
            sluice_env.client.lpush(queue, item)
    worker = processes.worker()
    receipt = submit("analytics.track", {"event": "after-garbage"})
    wait_for(lambda: len(effects.read("analytics")) == 1, timeout=30, what="valid job ran")
    assert worker.alive()
    store = DeadLetterStore()
    drain_spool(store, redis_client(), get_settings().spool_path)
    rows = store.list(Filters(), limit=100)
    assert len(rows) == 16
    assert {r.reason for r in rows} == {"MALFORMED_MESSAGE"}
    assert {r.queue for r in rows} == {"critical", "high", "normal", "low"}
    assert receipt.task_id not in {r.task_id for r in rows}


def test_an_expired_job_is_dropped_counted_and_not_dead_lettered(sluice_env: Env,
                                                               processes: Processes) -> None:
    receipt = submit("analytics.track", {"event": "stale"}, deadline=0.01)
    processes.worker()  # starting a worker takes far longer than the 10 ms deadline
    submit("analytics.track", {"event": "fresh"})
    wait_for(lambda: len(effects.read("analytics")) == 1, what="fresh job ran")
    wait_for(lambda: redis_client().hget(keys.EXPIRED, "analytics.track") == b"1",
             what="expiry counted")
    assert [r["event"] for r in effects.read("analytics")] == ["fresh"]
    assert _dead(receipt.task_id) == []
    assert not sluice_env.client.hexists(keys.LEDGER, receipt.task_id)  # never re-sent


@pytest.mark.parametrize("priority", list(Priority))
def test_retry_policy_defaults_per_priority(priority: Priority) -> None:
    from workers.policy import policy_for

    policies = {p: policy_for(p, cap_s=600) for p in Priority}
    assert policies[Priority.CRITICAL].max_retries == max(p.max_retries
                                                          for p in policies.values())
    assert policies[priority].jitter and policies[priority].cap_s == 600
