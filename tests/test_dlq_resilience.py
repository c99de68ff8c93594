"""Never lose a failure record: retries, circuit breaker, Redis spool, file spool, drain;
replay through the gate; the schema check."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pybreaker
import pytest
from sqlalchemy import create_engine

from dlq.recorder import Recorder, SlowCallListener
from dlq.replay import replay_many, replay_one
from dlq.spool import drain_spool, spool_sizes
from dlq.store import DeadLetterStore, Filters
from producers import default_producer
from sluice import keys
from sluice.errors import PendingMigrations, ReplayRefused
from sluice.priorities import QUEUES, PressureLevel, Priority
from sluice.settings import get_settings, load_settings
from tests.conftest import Env, Processes
from tests.services import PostgresServer, wait_for
from tests.test_dlq_store import rec

DEAD_DB = "postgresql+psycopg2://postgres@127.0.0.1:1/none"


def _recorder(url: str, **settings: object) -> Recorder:
    s = load_settings(**settings)
    return Recorder(DeadLetterStore(create_engine(url, connect_args={"connect_timeout": 1})), s)


def test_database_down_spools_to_redis_and_drain_moves_each_record_once(
        store_env: Env) -> None:
    down = _recorder(DEAD_DB)
    assert [down.record(rec(f"s{i}")) for i in range(10)] == ["redis"] * 10
    assert down.breaker.current_state == pybreaker.STATE_OPEN  # after 5 failures
    down.record(rec("s0"))  # the same failure spooled twice
    store = DeadLetterStore()
    client = store_env.client
    assert drain_spool(store, client, get_settings().spool_path) == 11
    assert store.count() == 10
    assert drain_spool(store, client, get_settings().spool_path) == 0
    assert spool_sizes(client, get_settings().spool_path) == {"redis": 0, "file": 0}


def test_database_and_redis_down_spool_to_an_fsynced_file(store_env: Env,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    monkeypatch.setenv("SLUICE_REDIS_URL", "redis://127.0.0.1:1/0")
    from tests.conftest import reset_all

    reset_all()
    down = _recorder(DEAD_DB)
    assert [down.record(rec(f"f{i}")) for i in range(7)] == ["file"] * 7
    path = get_settings().spool_path
    lines = path.read_text().splitlines()
    assert len(lines) == 7 and json.loads(lines[0])["task_id"] == "f0"
    store = DeadLetterStore()
    assert drain_spool(store, None, path) == 7
    assert store.count() == 7 and path.read_text() == ""


def test_slow_store_opens_the_circuit() -> None:
    breaker = pybreaker.CircuitBreaker(fail_max=5, listeners=[SlowCallListener(3, 0.01)])
    import time

    for _ in range(3):
        breaker.call(time.sleep, 0.02)
    assert breaker.current_state == pybreaker.STATE_OPEN


@pytest.fixture
def own_postgres(redis_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN001, ANN201
    from tests.conftest import _make_env, reset_all

    server = PostgresServer().start()
    server.execute("CREATE DATABASE sluice")
    env = _make_env(redis_server, server.url("sluice"), tmp_path, monkeypatch)
    from dlq.migrate import upgrade

    upgrade()
    env.pg = server  # type: ignore[attr-defined]
    yield env
    reset_all()
    server.remove()


def test_postgres_stopped_while_a_worker_dead_letters_100_jobs(own_postgres: Env) -> None:
    from producers import submit_many

    procs = Processes(own_postgres)
    try:
        procs.worker(concurrency=2)
        own_postgres.pg.stop()  # type: ignore[attr-defined]
        submit_many("demo.flaky", [{"permanent": True}] * 100)
        wait_for(lambda: own_postgres.client.llen(keys.DLQ_SPOOL) == 100, timeout=90,
                 what="100 spooled dead letters")
        own_postgres.pg.start()  # type: ignore[attr-defined]
        store = DeadLetterStore()
        wait_for(lambda: drain_spool(store, own_postgres.client, get_settings().spool_path)
                 or True, what="database back")
        assert store.count() == 100
        assert len({r.task_id for r in store.list(limit=200)}) == 100
    finally:
        procs.stop_all()


def _valid_payloads(store: DeadLetterStore) -> None:
    from sqlalchemy import update

    from dlq.models import DeadLetter

    with store.engine.begin() as conn:
        conn.execute(update(DeadLetter).values(payload={"fail_times": 0}))


def test_replay_of_1000_rows_at_normal_enqueues_each_on_its_queue(
        store_env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.conftest import reset_all

    # no worker drains the queues here: thresholds above 1,000 keep the gate at NORMAL
    monkeypatch.setenv("SLUICE_PRESSURE_WARNING", "2000")
    monkeypatch.setenv("SLUICE_PRESSURE_CRITICAL", "3000")
    reset_all()
    store = DeadLetterStore()
    prios = list(Priority)
    store.record_many([rec(f"r{i}", task="demo.flaky", priority=prios[i % 4].name)
                       for i in range(1000)])
    _valid_payloads(store)
    producer = default_producer()
    counts = replay_many(store, producer, store.ids())
    assert counts == {"replayed": 1000}
    assert {q: store_env.client.llen(q) for q in QUEUES} == {q: 250 for q in QUEUES}
    assert store.count(Filters(status="replayed")) == 1000
    row = store.get_by_task_id("r0")
    assert row.replayed_task_id and row.replay_count == 1
    with pytest.raises(ReplayRefused):
        replay_one(store, producer, row.id)


def test_replay_at_shed_only_replays_critical(store_env: Env) -> None:
    store = DeadLetterStore()
    store.record_many([rec(f"r{i}", task="demo.flaky", priority=p.name)
                       for i, p in enumerate(Priority)])
    _valid_payloads(store)
    producer = default_producer()
    producer.start()
    store_env.client.lpush("low", *[b"x"] * 5000)
    wait_for(lambda: producer.monitor.level is PressureLevel.SHED, what="SHED")
    counts = replay_many(store, producer, store.ids())
    assert counts == {"replayed": 1, "rejected": 3}
    assert store.get_by_task_id("r0").status == "replayed"
    for i in (1, 2, 3):
        row = store.get_by_task_id(f"r{i}")
        assert row.status == "pending" and "QUEUE_PRESSURE" in row.reason


def test_stale_schema_is_refused_with_the_upgrade_command(redis_server, postgres,  # noqa: ANN001
                                                          tmp_path: Path) -> None:
    url = postgres.url("postgres")  # never migrated
    with pytest.raises(PendingMigrations, match="sluice db upgrade"):
        from dlq.migrate import check_schema

        check_schema(create_engine(url))
    env = {"SLUICE_REDIS_URL": redis_server.url, "SLUICE_DATABASE_URL": url,
           "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "celery", "-A", "sluice.app", "worker",
                          "-Q", "low", "-c", "1"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode != 0
    assert "sluice db upgrade" in out.stdout + out.stderr
