"""The dead-letter store contract, run on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from dlq.models import Status
from dlq.store import DeadLetterStore, Filters, Written
from sluice.errors import NotFound
from sluice.records import DeadLetterRecord
from tests.conftest import Env

NOW = time.time()


def rec(task_id: str, *, task: str = "email.send", priority: str = "HIGH", at: float = NOW,
        reason: str = "EXHAUSTED", attempts: int = 3, generation: int = 0,
        message: str = "boom", payload: Any = None, **extra: Any) -> DeadLetterRecord:
    return DeadLetterRecord(task_id=task_id, task_name=task, queue=priority.lower(),
                            priority=priority, payload=payload or {"to": "a@b.io", "n": 1},
                            exc_type="RuntimeError", exc_message=message,
                            traceback="Traceback..", attempts=attempts, first_failed_at=at,
                            last_failed_at=at, reason=reason, retryable=reason == "EXHAUSTED",
                            generation=generation, **extra)


def test_record_then_get_round_trips_every_field(store_env: Env) -> None:
    store = DeadLetterStore()
    store.record(rec("t1", generation=2, effect_key="signup-42", sealed="gAAAA-token"))
    row = store.get_by_task_id("t1")
    assert store.get(row.id).task_id == "t1"
    d = row.as_dict()
    for key in ("id", "task_id", "task_name", "queue", "priority", "status", "reason",
                "payload", "exc_type", "exc_message", "traceback", "attempts",
                "first_failed_at", "last_failed_at", "replayed_task_id", "replay_count",
                "next_retry_at", "generation", "effect_key", "sealed"):
        assert key in d
    assert d["status"] == "pending" and d["payload"] == {"to": "a@b.io", "n": 1}
    assert (d["generation"], d["effect_key"], d["sealed"]) == (2, "signup-42", "gAAAA-token")
    assert d["attempts"] == 3 and d["priority"] == "HIGH"


def test_twenty_threads_recording_the_same_task_id_make_one_row(store_env: Env) -> None:
    store, barrier, errors = DeadLetterStore(), threading.Barrier(20), []

    def go() -> None:
        barrier.wait()
        try:
            store.record(rec("same"))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=go) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.count() == 1


def test_a_newer_failure_updates_the_row_an_older_one_does_not(store_env: Env) -> None:
    store = DeadLetterStore()
    store.record(rec("t", at=NOW, attempts=3))
    store.record(rec("t", at=NOW - 100, attempts=1))
    assert store.get_by_task_id("t").attempts == 3
    store.record(rec("t", at=NOW + 100, attempts=7))
    row = store.get_by_task_id("t")
    assert row.attempts == 7 and store.count() == 1


def test_record_many_writes_a_batch_and_dedupes_within_it(store_env: Env) -> None:
    store = DeadLetterStore()
    n = store.record_many([rec(f"b{i}") for i in range(300)] + [rec("b0", at=NOW + 1)])
    assert n == 300 and store.count() == 300


def test_list_filters_and_pages_newest_first(store_env: Env) -> None:
    store = DeadLetterStore()
    store.record_many([rec(f"e{i}", at=NOW - i) for i in range(5)] +
                      [rec(f"a{i}", task="analytics.track", priority="LOW", at=NOW - 10 - i)
                       for i in range(3)])
    assert [r.task_id for r in store.list(limit=3)] == ["e0", "e1", "e2"]
    assert [r.task_id for r in store.list(limit=3, offset=3)] == ["e3", "e4", "a0"]
    assert {r.task_id for r in store.list(Filters(priority="LOW"))} == {"a0", "a1", "a2"}
    assert store.count(Filters(task_name="email.send", queue="high")) == 5
    since = dt.datetime.fromtimestamp(NOW - 2.5, dt.UTC)
    assert {r.task_id for r in store.list(Filters(since=since))} == {"e0", "e1", "e2"}
    assert {r.task_id for r in store.list(Filters(until=since, task_name="email.send"))} == \
        {"e3", "e4"}


def test_get_unknown_raises_not_found_naming_the_id(store_env: Env) -> None:
    with pytest.raises(NotFound, match="4242"):
        DeadLetterStore().get(4242)


def test_discard_then_purge_removes_exactly_the_rows_past_retention(store_env: Env) -> None:
    store = DeadLetterStore()
    store.record_many([rec(f"p{i}") for i in range(4)])
    ids = {r.task_id: r.id for r in store.list()}
    assert store.discard([ids["p0"], ids["p1"]]) == 2
    store.set_status([ids["p2"]], Status.EXHAUSTED)
    now = dt.datetime.now(dt.UTC)
    assert store.purge(dt.timedelta(days=7), now) == 0  # discarded just now: kept
    assert store.purge(dt.timedelta(days=7), now + dt.timedelta(days=8)) == 2
    assert {r.task_id for r in store.list()} == {"p2", "p3"}  # exhausted, pending stay


def test_stats_count_by_status_task_and_priority(store_env: Env) -> None:
    store = DeadLetterStore()
    store.record_many([rec("s1"), rec("s2"), rec("s3", task="cleanup.run", priority="LOW")])
    store.discard([store.get_by_task_id("s1").id])
    stats = store.stats()
    assert stats["by_status"] == {"pending": 2, "discarded": 1}
    assert stats["by_task"] == {"email.send": 2, "cleanup.run": 1}
    assert stats["by_priority"] == {"HIGH": 2, "LOW": 1}
    assert stats["total"] == {"all": 3}


def test_due_for_retry_selects_pending_retryable_rows_whose_time_has_come(
        store_env: Env) -> None:
    store = DeadLetterStore(retry_base_s=900)
    store.record_many([rec("r1"), rec("r2", reason="PERMANENT")])
    now = dt.datetime.fromtimestamp(NOW, dt.UTC)
    assert store.due_for_retry(now) == []
    assert [r.task_id for r in store.due_for_retry(now + dt.timedelta(minutes=15))] == ["r1"]


def test_a_newer_generation_wins_even_from_a_host_whose_clock_is_behind(store_env: Env) -> None:
    store = DeadLetterStore()
    store.record(rec("g", at=NOW, attempts=3))
    store.set_status([store.get_by_task_id("g").id], Status.REPLAYED, replay_count=1)
    # the replay fails on a worker whose clock is two minutes behind the first one's
    store.record(rec("g", at=NOW - 120, attempts=1, generation=1, message="again"))
    row = store.get_by_task_id("g")
    assert (row.exc_message, row.generation, row.attempts, row.status) == \
        ("again", 1, 1, "pending")
    # a late report of the original failure (a spool drained late) changes nothing
    store.record(rec("g", at=NOW + 60, attempts=3, generation=0, message="late"))
    assert store.get_by_task_id("g").exc_message == "again"


def test_find_accepts_the_numeric_id_or_the_task_id_printed_in_logs(store_env: Env) -> None:
    store = DeadLetterStore()
    logged = f"malformed-{uuid.uuid4()}"
    store.record_many([rec(logged), rec("98765")])
    row = store.get_by_task_id(logged)
    assert store.find(str(row.id)).task_id == logged
    assert store.find(logged).id == row.id
    assert store.find("98765").task_id == "98765"  # all digits, but no row has that id
    with pytest.raises(NotFound, match="nope"):
        store.find("nope")


def test_a_record_the_database_refuses_is_quarantined_and_the_rest_of_its_batch_stored(
        store_env: Env) -> None:
    store = DeadLetterStore()
    nameless = dataclasses.replace(rec("nameless"), task_name=None)  # NOT NULL column
    binary = rec("binary", message="bad byte \x00 in the message")
    written = store.write([rec(f"n{i}") for i in range(5)] + [nameless, binary])
    assert (written.stored, written.quarantined) == (6, 1)
    [kept] = store.quarantined()
    assert kept.task_id == "nameless" and "task_name" in kept.error
    assert store.get_by_task_id("binary").exc_message == "bad byte \\x00 in the message"
    assert store.write([nameless]) == Written(0, 1) and store.quarantine_count() == 1  # once


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_migration_0002_keeps_the_rows_written_before_it(kind: str, request: pytest.FixtureRequest,
                                                         tmp_path: Path) -> None:
    from sqlalchemy import create_engine, text

    from dlq.migrate import upgrade

    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'old.db'}"
    else:
        server = request.getfixturevalue("postgres")
        name = "m_" + uuid.uuid4().hex[:12]
        server.execute(f"CREATE DATABASE {name}")
        url = server.url(name)
    eng = create_engine(url)
    try:
        upgrade(eng, "0001")
        with eng.begin() as conn:
            conn.execute(text(
                "INSERT INTO dead_letters (task_id, task_name, queue, priority, payload, "
                "exc_type, exc_message, traceback, attempts, first_failed_at, last_failed_at, "
                "status, reason, retryable, replay_count, updated_at) VALUES ('old', 'email.send',"
                " 'high', 'HIGH', '{}', 'E', 'm', '', 2, :t, :t, 'pending', '', true, 0, :t)"),
                {"t": dt.datetime.now(dt.UTC)})
        upgrade(eng)
        store = DeadLetterStore(eng)
        row = store.get_by_task_id("old")
        assert (row.generation, row.sealed, row.effect_key, row.attempts) == (0, None, None, 2)
        store.record(rec("old", generation=1, attempts=1))
        assert store.get_by_task_id("old").generation == 1
        store.record(rec("t" * 255))  # the widened column
        assert store.count() == 2
    finally:
        eng.dispose()
