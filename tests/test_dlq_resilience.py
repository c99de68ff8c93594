"""Never lose a failure record: retries, circuit breaker, Redis spool, file spool, drain;
replay through the gate; the schema check."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
from pathlib import Path

import pybreaker
import pytest
from sqlalchemy import create_engine

from delivery.spool import spool_sizes
from dlq.drain import drain_spool
from dlq.recorder import Recorder, SlowCallListener
from dlq.replay import replay_many, replay_one
from dlq.store import DeadLetterStore, Filters
from producers import default_producer
from sluice import keys
from sluice.errors import PendingMigrations, ReplayRefused
from sluice.priorities import QUEUES, PressureLevel, Priority
from sluice.records import DeadLetterRecord
from sluice.settings import get_settings, load_settings
from tests.conftest import Env, Processes
from tests.services import PostgresServer, wait_for
from tests.test_dlq_store import rec

DEAD_DB = "postgresql+psycopg2://postgres@127.0.0.1:1/none"


def _recorder(url: str, **settings: object) -> Recorder:
    s = load_settings(**settings)
    return Recorder(DeadLetterStore(create_engine(url, connect_args={"connect_timeout": 1})), s)


def test_database_down_spools_to_the_fsynced_file_first_and_drain_moves_each_record_once(
        store_env: Env) -> None:
    down = _recorder(DEAD_DB)
    assert [down.record(rec(f"s{i}")) for i in range(10)] == ["file"] * 10
    assert down.breaker.current_state == pybreaker.STATE_OPEN  # after 5 failures
    down.record(rec("s0"))  # the same failure spooled twice
    path, client = get_settings().spool_path, store_env.client
    lines = path.read_text().splitlines()
    assert len(lines) == 11 and json.loads(lines[0])["task_id"] == "s0"
    assert client.llen(keys.DLQ_SPOOL) == 0  # a Redis without persistence holds none of them
    store = DeadLetterStore()
    assert drain_spool(store, client, path).stored == 10  # the duplicate written once
    assert store.count() == 10
    assert drain_spool(store, client, path).stored == 0
    assert spool_sizes(client, path) == {"redis": 0, "file": 0}


def test_redis_holds_dead_letters_only_when_the_file_cannot_be_written(
        store_env: Env, tmp_path: Path) -> None:
    down = _recorder(DEAD_DB, spool_path=tmp_path)  # a directory: not writable as a file
    assert [down.record(rec(f"r{i}")) for i in range(3)] == ["redis"] * 3
    store = DeadLetterStore()
    assert drain_spool(store, store_env.client, get_settings().spool_path).stored == 3
    assert store.count() == 3


def test_a_worker_drains_its_own_file_spool_safely_beside_reconcile(store_env: Env) -> None:
    from dlq.drain import drain_local_spool  # what a worker runs as it starts

    path = get_settings().spool_path
    path.write_text("".join(rec(f"l{i}").to_json() + "\n" for i in range(300)))
    barrier, moved = threading.Barrier(2), []

    def worker_start() -> None:
        barrier.wait()
        moved.append(drain_local_spool().stored)

    def reconcile() -> None:
        barrier.wait()
        moved.append(drain_spool(DeadLetterStore(), store_env.client, path).stored)

    threads = [threading.Thread(target=worker_start), threading.Thread(target=reconcile)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(moved) == [0, 300]  # one drain took each line, the other found none
    assert DeadLetterStore().count() == 300 and path.read_text() == ""


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
        path = get_settings().spool_path
        wait_for(lambda: spool_sizes(own_postgres.client, path)["file"] == 100, timeout=90,
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


@pytest.fixture
def secret_key(store_env: Env, monkeypatch: pytest.MonkeyPatch) -> str:
    from cryptography.fernet import Fernet

    from tests.conftest import reset_all

    key = Fernet.generate_key().decode()
    monkeypatch.setenv("SLUICE_SECRET_KEY", key)
    reset_all()
    return key


EMAIL = {"to": "a@b.io", "subject": "welcome", "body": "", "smtp_password": "hunter2"}


def _email_dead_letter(task_id: str, **fields: object) -> DeadLetterRecord:
    """What the worker records for a failed email.send: secrets masked in `payload`."""
    return DeadLetterRecord(task_id=task_id, task_name="email.send", queue="high",
                            priority="HIGH", payload={**EMAIL, "smtp_password": "***"},
                            exc_type="SMTPAuthenticationError", exc_message="535",
                            **fields)  # type: ignore[arg-type]


def _sent(client, queue: str) -> tuple[list, dict]:  # noqa: ANN001
    """The arguments and headers of the one message waiting on `queue`."""
    [raw] = client.lrange(queue, 0, -1)
    message = json.loads(raw)
    args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
    return args, message["headers"]


def test_a_replay_runs_the_original_job_its_secrets_unsealed_and_its_effect_key_kept(
        secret_key: str, store_env: Env) -> None:
    from sluice.sealed import seal

    store = DeadLetterStore()
    store.record(_email_dead_letter("orig-1", sealed=seal(EMAIL), effect_key="signup-42"))
    row = store.get_by_task_id("orig-1")
    assert "hunter2" not in json.dumps(row.as_dict())  # never in clear in a row
    outcome = replay_one(store, default_producer(), row.id)
    args, headers = _sent(store_env.client, "high")
    from sluice.sealed import unseal_secrets
    from workers.tasks.email import Email

    assert "hunter2" not in json.dumps(args)  # sealed again on its way
    assert [unseal_secrets(Email, args[0])] == [EMAIL]  # the real password, not ***
    assert headers["sluice_key"] == "signup-42" and headers["sluice_generation"] == 1
    assert headers["sluice_origin"] == "orig-1" and outcome.outcome == "replayed"
    assert "hunter2" not in json.dumps(store.get(row.id).as_dict())


def test_a_masked_payload_without_its_sealed_copy_is_refused(store_env: Env) -> None:
    store = DeadLetterStore()
    store.record(_email_dead_letter("orig-2"))  # the worker had no SLUICE_SECRET_KEY
    row = store.get_by_task_id("orig-2")
    with pytest.raises(ReplayRefused, match="smtp_password.*SLUICE_SECRET_KEY"):
        replay_one(store, default_producer(), row.id)
    assert store_env.client.llen("high") == 0 and store.get(row.id).status == "pending"


def test_a_replay_keeps_the_effect_key_so_an_effect_applied_before_the_failure_is_not_applied_again(
        processes: Processes, sluice_env: Env) -> None:
    from workers import effects

    # the original job wrote its audit entry, then failed (its worker timed out afterwards)
    effects.put("audit", "orig-3", {"task_id": "orig-3", "actor": "a", "action": "login"})
    store = DeadLetterStore()
    store.record(DeadLetterRecord(task_id="orig-3", task_name="audit.record", queue="critical",
                                  priority="CRITICAL", payload={"actor": "a", "action": "login"},
                                  exc_type="TimeLimitExceeded", exc_message="after the write"))
    outcome = replay_one(store, default_producer(), store.get_by_task_id("orig-3").id)
    worker = processes.worker()
    wait_for(lambda: f"[{outcome.task_id}] succeeded" in worker.output(),
             what="the replayed job ran")
    assert [e["task_id"] for e in effects.read("audit")] == ["orig-3"]
