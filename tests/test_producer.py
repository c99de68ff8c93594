"""The producer API against a real Redis (no worker): gate, validation, idempotency, kill
switches, batches, asyncio, and the broker-down path with the CRITICAL outbox."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from delivery.outbox import outbox_size
from producers import (
    InvalidOption,
    InvalidPayload,
    Priority,
    Rejected,
    UnknownTask,
    default_producer,
    submit,
    submit_async,
    submit_many,
)
from producers.killswitch import turn_off, turn_on
from sluice import keys
from sluice.priorities import QUEUES, PressureLevel
from tests.conftest import Env, _make_env, reset_all
from tests.services import RedisServer, wait_for

EMAIL = {"to": "a@b.io", "subject": "hi"}
TASK_FOR = {Priority.CRITICAL: ("audit.record", {"actor": "a", "action": "login"}),
            Priority.HIGH: ("email.send", EMAIL),
            Priority.NORMAL: ("data.sync", {"source": "s", "destination": "d"}),
            Priority.LOW: ("analytics.track", {"event": "e"})}


def _fill(env: Env, depth: int) -> None:
    """Put `depth` placeholder items on the low queue (no worker runs in these tests)."""
    env.client.delete(*QUEUES)
    pipe = env.client.pipeline()
    for start in range(0, depth, 1000):
        pipe.lpush("low", *[b"x"] * min(1000, depth - start))
    pipe.execute()


def _level(target: PressureLevel) -> bool:
    return default_producer().monitor.level is target


def test_submit_sends_an_ordinary_celery_message_to_the_priority_queue(sluice_env: Env) -> None:
    receipt = submit("email.send", EMAIL)
    assert receipt.queue == "high" and receipt.priority is Priority.HIGH
    assert receipt.level is PressureLevel.NORMAL and not receipt.duplicate
    message = json.loads(sluice_env.client.lindex("high", 0))
    assert message["headers"]["task"] == "email.send"
    assert message["headers"]["id"] == receipt.task_id
    assert message["content-type"] == "application/json"
    assert message["properties"]["priority"] == 0


def test_tenant_and_extra_headers_travel_on_the_message_and_cannot_forge_sluice_headers(
        sluice_env: Env) -> None:
    submit("email.send", EMAIL, tenant="acme",
           headers={"trace_id": "t-1", "sluice_priority": "CRITICAL"})
    submit("email.send", EMAIL)
    second, first = (json.loads(m)["headers"] for m in sluice_env.client.lrange("high", 0, -1))
    assert first["sluice_tenant"] == "acme" and first["trace_id"] == "t-1"
    assert first["sluice_priority"] == "HIGH"  # the caller's header never overrides Sluice's
    assert second["sluice_tenant"] == "default"
    with pytest.raises(InvalidOption, match="tenant"):
        submit("email.send", EMAIL, tenant="")


def test_explicit_priority_overrides_the_default(sluice_env: Env) -> None:
    assert submit("email.send", EMAIL, priority="critical").queue == "critical"


@pytest.mark.parametrize("depth, level", [(0, PressureLevel.NORMAL),
                                          (500, PressureLevel.WARNING),
                                          (1000, PressureLevel.CRITICAL),
                                          (5000, PressureLevel.SHED)])
def test_each_level_accepts_delays_and_sheds_per_the_table(sluice_env: Env, depth: int,
                                                          level: PressureLevel) -> None:
    from producers.pressure import decide

    default_producer().start()
    _fill(sluice_env, depth)
    wait_for(lambda: _level(level), what=f"level {level.name}")
    for priority, (task, payload) in TASK_FOR.items():
        expected = decide(level, priority)
        if expected.allowed:
            receipt = submit(task, payload, priority=priority)
            assert receipt.delayed_ms == expected.delay_ms and receipt.level is level
        else:
            with pytest.raises(Rejected) as info:
                submit(task, payload, priority=priority)
            assert info.value.reason == "QUEUE_PRESSURE" and info.value.level is level
            assert info.value.priority is priority and info.value.retry_after_s > 0


def test_invalid_payload_lists_each_bad_field_and_enqueues_nothing(sluice_env: Env) -> None:
    with pytest.raises(InvalidPayload) as info:
        submit("email.send", {"to": "not-an-address", "subject": 5})
    assert set(info.value.fields) == {"to", "subject"}
    assert "to" in str(info.value) and "subject" in str(info.value)
    assert sluice_env.client.llen("high") == 0


def test_unknown_task_is_an_error_naming_it(sluice_env: Env) -> None:
    with pytest.raises(UnknownTask, match="emial.send"):
        submit("emial.send", EMAIL)


def test_same_idempotency_key_from_50_threads_enqueues_once(sluice_env: Env) -> None:
    default_producer().start()
    barrier, receipts = threading.Barrier(50), []

    def go() -> None:
        barrier.wait()
        receipts.append(submit("email.send", EMAIL, idempotency_key="signup-42"))

    threads = [threading.Thread(target=go) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sluice_env.client.llen("high") == 1
    assert len({r.task_id for r in receipts}) == 1
    assert sum(not r.duplicate for r in receipts) == 1


def test_submit_many_returns_a_receipt_or_rejection_per_item_in_order(sluice_env: Env) -> None:
    default_producer().start()
    _fill(sluice_env, 600)
    wait_for(lambda: _level(PressureLevel.WARNING), what="WARNING")
    out = submit_many("analytics.track", [{"event": "a"}, {"event": "b"}])
    assert all(isinstance(o, Rejected) and o.reason == "QUEUE_PRESSURE" for o in out)
    out = submit_many("audit.record", [{"actor": "a", "action": str(i)} for i in range(300)])
    assert [o.queue for o in out] == ["critical"] * 300
    ids = [json.loads(m)["headers"]["id"] for m in sluice_env.client.lrange("critical", 0, -1)]
    assert list(reversed(ids)) == [o.task_id for o in out]  # LPUSH: oldest at the tail


def test_submit_many_uses_one_round_trip_for_the_batch(sluice_env: Env,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Round trips are counted where redis-py makes them, in this thread (not the monitor's):
    each pipeline sent and each command sent on its own."""
    from redis import Redis
    from redis.client import Pipeline

    default_producer().start()
    submit("analytics.track", {"event": "warm-up"})  # loads the send script once
    trips: list[str] = []
    me = threading.get_ident()

    def counted(name: str, real: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() == me:
                trips.append(name)
            return real(*args, **kwargs)
        return call

    monkeypatch.setattr(Pipeline, "_execute_pipeline",
                        counted("pipeline", Pipeline._execute_pipeline))
    monkeypatch.setattr(Redis, "execute_command", counted("command", Redis.execute_command))
    submit_many("analytics.track", [{"event": str(i)} for i in range(500)])
    monkeypatch.undo()
    assert trips == ["pipeline"]
    assert sluice_env.client.llen("low") == 501


def test_submit_many_with_one_invalid_payload_enqueues_nothing(sluice_env: Env) -> None:
    with pytest.raises(InvalidPayload) as info:
        submit_many("analytics.track", [{"event": "ok"}, {"event": ""}])
    assert info.value.fields == ["[1].event"]
    assert sluice_env.client.llen("low") == 0


def test_kill_switch_rejects_a_priority_and_a_task_for_every_producer(sluice_env: Env) -> None:
    producer = default_producer()
    turn_on(sluice_env.client, "priority:LOW", "maintenance")
    turn_on(sluice_env.client, "task:email.send", "provider outage")
    producer.monitor.tick()
    for task, payload in (("analytics.track", {"event": "e"}), ("email.send", EMAIL)):
        with pytest.raises(Rejected) as info:
            submit(task, payload)
        assert info.value.reason == "KILL_SWITCH" and info.value.retry_after_s > 0
    assert submit("data.sync", {"source": "s", "destination": "d"}).queue == "normal"
    turn_off(sluice_env.client, "LOW")
    producer.monitor.tick()
    assert submit("analytics.track", {"event": "e"}).queue == "low"


def test_async_submit_does_not_block_the_event_loop(sluice_env: Env) -> None:
    default_producer().start()
    _fill(sluice_env, 600)
    wait_for(lambda: _level(PressureLevel.WARNING), what="WARNING")

    async def main() -> tuple[list[object], int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        receipts = await asyncio.gather(*[submit_async("email.send", EMAIL) for _ in range(5)])
        task.cancel()
        return list(receipts), ticks

    receipts, ticks = asyncio.run(main())
    assert all(r.delayed_ms == 250 for r in receipts)  # type: ignore[attr-defined]
    assert ticks >= 10  # the loop kept running through the 250 ms delays


def test_pressure_change_is_published(sluice_env: Env) -> None:
    producer = default_producer()
    producer.start()
    pubsub = sluice_env.client.pubsub()
    pubsub.subscribe(keys.PRESSURE_CHANNEL)
    wait_for(lambda: pubsub.get_message(timeout=0.1), what="subscribe confirmation")
    seen: list[object] = []
    producer.monitor.hooks.append(seen.append)
    submit("email.send", EMAIL, tenant="acme")  # in the event's busiest tenants
    _fill(sluice_env, 1200)
    msg = wait_for(lambda: pubsub.get_message(timeout=0.1), what="pressure_change message")
    event = json.loads(msg["data"])
    assert event["event"] == "pressure_change" and event["new"] == "CRITICAL"
    assert event["old"] == "NORMAL" and event["depth"] >= 1000 and event["at"] > 0
    assert event["tenants"]["HIGH"][0]["tenant"] == "acme" and "predicted_wait_s" in event
    wait_for(lambda: seen, what="hook called")
    assert seen[0].new is PressureLevel.CRITICAL  # type: ignore[attr-defined]
    pubsub.close()


@pytest.fixture
def own_redis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    server = RedisServer(tmp_path / "own-redis").start()
    env = _make_env(server, f"sqlite:///{tmp_path / 'sluice.db'}", tmp_path, monkeypatch)
    yield env
    reset_all()
    server.stop()


def test_redis_down_refuses_low_and_keeps_critical_in_the_outbox(own_redis: Env) -> None:
    producer = default_producer()
    producer.start()
    own_redis.redis.stop()
    wait_for(lambda: _level(PressureLevel.UNKNOWN), what="level UNKNOWN")
    with pytest.raises(Rejected) as info:
        submit("analytics.track", {"event": "e"})
    assert info.value.reason == "BROKER_UNAVAILABLE" and info.value.retry_after_s > 0
    receipts = [submit("audit.record", {"actor": "a", "action": str(i)}) for i in range(3)]
    assert all(r.outboxed for r in receipts) and outbox_size() == 3
    own_redis.redis.start()
    wait_for(lambda: outbox_size() == 0, timeout=20, what="outbox flushed after Redis is back")
    producer.flush_outbox()  # a second flush (the reconcile job) sends nothing more
    ids = [json.loads(m)["headers"]["id"] for m in own_redis.client.lrange("critical", 0, -1)]
    assert sorted(ids) == sorted(r.task_id for r in receipts)
    assert own_redis.client.llen("low") == 0
