"""The producer's promises under faults, against a real Redis: a receipt is the truth even
when Redis stalls, a claimed idempotency key always has its job, an over-long countdown is
refused, and the gate never decides on a stale or inherited view."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from producers import (
    InvalidOption,
    OutcomeUnknown,
    Priority,
    Rejected,
    default_producer,
    submit,
    submit_async,
)
from producers.monitor import PressureEvent
from sluice.priorities import QUEUES, PressureLevel
from tests.conftest import Env, _make_env, reset_all
from tests.services import RedisServer, wait_for

JOBS = {Priority.NORMAL: ("data.sync", {"source": "s", "destination": "d"}),
        Priority.CRITICAL: ("audit.record", {"actor": "a", "action": "stalled"})}


def _queued_ids(env: Env) -> Counter[str]:
    return Counter(json.loads(m)["headers"]["id"] for q in QUEUES
                   for m in env.client.lrange(q, 0, -1) if m.startswith(b"{"))


def _fill(env: Env, depth: int) -> None:
    env.client.delete(*QUEUES)
    for start in range(0, depth, 1000):
        env.client.lpush("low", *[b"x"] * min(1000, depth - start))


@pytest.fixture
def sleepy_redis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    """A Redis of its own that accepts DEBUG SLEEP: a stall that blocks the server itself,
    so that commands already written wait in its socket and run when it wakes."""
    server = RedisServer(tmp_path / "sleepy", extra_args=("--enable-debug-command", "yes"))
    server.start()
    env = _make_env(server, f"sqlite:///{tmp_path / 'sluice.db'}", tmp_path, monkeypatch,
                    redis_socket_timeout="0.25")
    yield env
    reset_all()
    server.stop()


def _stall(env: Env, seconds: float) -> threading.Thread:
    stalled = threading.Event()

    def sleep() -> None:
        client = env.redis.client()
        stalled.set()
        client.execute_command("DEBUG", "SLEEP", seconds)

    thread = threading.Thread(target=sleep, daemon=True)
    thread.start()
    stalled.wait(5)
    wait_for(lambda: _blocked(env), what="Redis asleep")
    return thread


def _blocked(env: Env) -> bool:
    try:
        redis.Redis(port=env.redis.port, socket_timeout=0.05, retry=Retry(NoBackoff(), 0)).ping()
    except redis.TimeoutError:
        return True
    return False


@pytest.mark.parametrize("stall_s", [0.8, 3.0])
def test_a_stalled_redis_never_gives_a_dishonest_receipt(sleepy_redis: Env,
                                                         stall_s: float) -> None:
    """Redis stalls mid-submission: a receipt means the job is queued exactly once, a
    rejection means it is not queued and never will be, CRITICAL is never refused."""
    env = sleepy_redis
    producer = default_producer()
    producer.start()
    outcomes: dict[Priority, object] = {}
    sleeper = _stall(env, stall_s)
    for priority, (task, payload) in JOBS.items():
        try:
            outcomes[priority] = submit(task, payload, priority=priority)
        except (Rejected, OutcomeUnknown) as exc:
            outcomes[priority] = exc
    sleeper.join(10)
    wait_for(lambda: producer.flush_outbox() == 0 and producer.monitor.level is
             PressureLevel.NORMAL, what="outbox flushed")
    producer.flush_outbox()  # a second flush (reconcile) must not add a copy either
    queued = _queued_ids(env)
    assert all(n == 1 for n in queued.values()), queued  # never a second copy
    assert not isinstance(outcomes[Priority.CRITICAL], Rejected)  # CRITICAL is never refused
    for priority, outcome in outcomes.items():
        if isinstance(outcome, Rejected):  # refused: and it is not queued
            assert env.client.llen(priority.queue) == 0
        elif not isinstance(outcome, OutcomeUnknown):  # a receipt: queued, once
            assert queued[outcome.task_id] == 1, (priority, outcome)  # type: ignore[attr-defined]


def test_a_cancelled_async_submission_leaves_its_key_free(sluice_env: Env) -> None:
    """Cancelled during the WARNING delay, nothing was sent: the retry with the same key is
    sent, not answered `duplicate`."""
    producer = default_producer()
    producer.start()
    _fill(sluice_env, 600)
    wait_for(lambda: producer.monitor.level is PressureLevel.WARNING, what="WARNING")
    task, payload = JOBS[Priority.NORMAL]

    async def cancelled() -> None:
        pending = asyncio.create_task(submit_async(task, payload, idempotency_key="k-1"))
        await asyncio.sleep(0.05)  # inside the 250 ms delay
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending

    asyncio.run(cancelled())
    retry = submit(task, payload, idempotency_key="k-1")
    assert not retry.duplicate and _queued_ids(sluice_env)[retry.task_id] == 1
    assert submit(task, payload, idempotency_key="k-1").duplicate


def test_a_countdown_redis_would_redeliver_early_is_refused(sluice_env: Env) -> None:
    """A job waits out its countdown reserved in a worker: countdown + the task's time limit
    (300 s here) must stay below the visibility timeout (3600 s), or it runs twice."""
    task, payload = JOBS[Priority.NORMAL]
    for countdown in (3300, 1e12, -1, float("nan"), float("inf")):
        with pytest.raises(InvalidOption, match="SLUICE_VISIBILITY_TIMEOUT"):
            submit(task, payload, countdown=countdown)
    assert not _queued_ids(sluice_env)
    assert submit(task, payload, countdown=3299).task_id


def _submit_low_in_child(queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    try:
        submit("analytics.track", {"event": "from a forked child"})
        queue.put("accepted")
    except Rejected as rej:
        queue.put(rej.reason)


def test_a_forked_child_decides_on_its_own_fresh_view(sluice_env: Env) -> None:
    producer = default_producer()
    producer.start()
    assert producer.monitor.level is PressureLevel.NORMAL
    producer.monitor._stop.set()  # the parent's sampler stops, so the view the child
    wait_for(lambda: not producer.monitor._thread.is_alive(), what="sampler stopped")
    # inherits is NORMAL: only a sample of its own can tell
    _fill(sluice_env, 5000)
    ctx = multiprocessing.get_context("fork")
    answers = ctx.Queue()
    child = ctx.Process(target=_submit_low_in_child, args=(answers,))
    child.start()
    child.join(30)
    assert answers.get(timeout=5) == "QUEUE_PRESSURE"


def test_a_stuck_sampler_does_not_keep_an_old_level(sluice_env: Env) -> None:
    """The sampler thread hangs (here in a subscriber); submissions resample rather than
    trust a level that is seconds old."""
    producer = default_producer()
    producer.start()
    release = threading.Event()

    def hang(event: PressureEvent) -> None:
        if threading.current_thread().name == "sluice-pressure":
            release.wait(30)

    producer.monitor.hooks.append(hang)
    try:
        _fill(sluice_env, 600)
        wait_for(lambda: producer.monitor.level is PressureLevel.WARNING, what="WARNING")
        _fill(sluice_env, 1200)  # CRITICAL now, but the sampler is stuck in `hang`
        task, payload = JOBS[Priority.NORMAL]

        def shed() -> bool:
            try:
                submit(task, payload)
            except Rejected as rej:
                return rej.reason == "QUEUE_PRESSURE"
            return False

        wait_for(shed, timeout=10, what="NORMAL shed at CRITICAL despite the stuck sampler")
    finally:
        release.set()
