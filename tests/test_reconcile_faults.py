"""Reconcile under faults: a record the store refuses, a database outage, a huge spool,
drains that overlap or die half-way. Real Redis, real stores, real processes."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from delivery.outbox import add_to_outbox
from delivery.spool import spool_sizes, spool_to_file
from dlq.drain import drain_spool
from dlq.store import DeadLetterStore
from schedules.jobs import run_reconcile
from sluice import keys
from sluice.settings import get_settings
from tests.conftest import Env, reset_all
from tests.services import ROOT, wait_for
from tests.test_dlq_store import rec

DEAD_DB = "postgresql+psycopg2://postgres@127.0.0.1:1/none"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def test_one_record_the_store_refuses_is_quarantined_and_every_other_step_still_runs(
        store_env: Env) -> None:
    path = get_settings().spool_path
    wide, too_wide = "w" * 80, "x" * 300  # task ids come from user-supplied Celery headers
    for r in (rec("ok-1"), rec(wide), rec(too_wide), rec("ok-2")):
        spool_to_file(r, path)
    add_to_outbox("crit-1", "audit.record", "critical", {"actor": "a", "action": "b"},
                  {"sluice_priority": "CRITICAL"})
    out = run_reconcile(_now())
    assert out["outbox_sent"] == 1 and store_env.client.llen("critical") == 1
    store = DeadLetterStore()
    assert {r.task_id for r in store.list()} == {"ok-1", wide, "ok-2"}
    assert out["drained"] == 3 and out["quarantined"] == 1 and "errors" not in out
    [kept] = store.quarantined()
    assert kept.task_id == too_wide and "task_id" in kept.error
    assert json.loads(kept.raw)["task_id"] == too_wide  # the whole record, visible
    assert spool_sizes(store_env.client, path) == {"redis": 0, "file": 0}
    again = run_reconcile(_now())  # not retried forever
    assert (again["drained"], again["quarantined"]) == (0, 0)


def test_a_database_outage_does_not_stop_ledger_recovery(sluice_env: Env,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    settings = get_settings()
    spool_to_file(rec("waiting"), settings.spool_path)
    monkeypatch.setenv("SLUICE_DATABASE_URL", DEAD_DB)
    reset_all()
    client, now = sluice_env.client, _now()
    # an accepted job lost in flight: in the ledger, in no queue, reserved by no worker
    client.hset(keys.LEDGER, "lost-1", "critical\n" + json.dumps({"headers": {"id": "lost-1"}}))
    client.zadd(keys.LEDGER_AT, {"lost-1": now.timestamp() - 3600})
    first = run_reconcile(now)
    later = run_reconcile(now + dt.timedelta(seconds=settings.ledger_confirm_seconds))
    assert (first["lost_resent"], later["lost_resent"]) == (0, 1)
    assert client.llen("critical") == 1
    assert set(later["errors"]) == {"drain", "outbox"}
    assert "OperationalError" in later["errors"]["drain"]
    assert spool_sizes(client, settings.spool_path)["file"] == 1  # kept for the next run


def test_a_spool_of_20000_records_is_stored_in_bounded_batches(store_env: Env) -> None:
    path = get_settings().spool_path
    path.write_text("".join(rec(f"big-{i}").to_json() + "\n" for i in range(20_000)))
    result = drain_spool(DeadLetterStore(), None, path)
    assert (result.stored, result.quarantined) == (20_000, 0)
    assert DeadLetterStore().count() == 20_000 and path.read_text() == ""


def _on_first_insert(store: DeadLetterStore, action: Any) -> None:
    """Run `action` once, as `store` is about to write its first dead letter (before that
    write is committed): a second drain overlapping this one at its worst moment."""
    fired: list[bool] = []

    def hook(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if not fired and statement.lstrip().upper().startswith("INSERT INTO DEAD_LETTERS"):
            fired.append(True)
            action()

    event.listen(store.engine, "before_cursor_execute", hook)


def test_overlapping_drains_delete_only_the_records_they_stored(store_env: Env,
                                                                tmp_path: Path) -> None:
    client = store_env.client
    client.rpush(keys.DLQ_SPOOL, *[rec(f"r{i}").to_json() for i in range(4)])
    slow = DeadLetterStore()  # its own engine, so the hook sees only this drain

    def overlap() -> None:
        # a second drain runs to the end while the first has not committed yet...
        drain_spool(DeadLetterStore(), client, tmp_path / "other-spool.jsonl", batch=4)
        # ...and workers spool more dead letters before the first drain finishes
        client.rpush(keys.DLQ_SPOOL, *[rec(f"r{i}").to_json() for i in range(4, 8)])

    _on_first_insert(slow, overlap)
    drain_spool(slow, client, tmp_path / "no-spool.jsonl", batch=4)
    drain_spool(DeadLetterStore(), client, tmp_path / "no-spool.jsonl", batch=4)
    assert {r.task_id for r in DeadLetterStore().list(limit=100)} == {f"r{i}" for i in range(8)}
    assert client.llen(keys.DLQ_SPOOL) == 0


CRASHING_DRAIN = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from sqlalchemy import event
    from dlq.drain import drain_spool
    from dlq.store import DeadLetterStore
    from sluice.connections import redis_client

    store = DeadLetterStore()

    def die(conn, cursor, statement, *args):
        if statement.lstrip().upper().startswith("INSERT INTO DEAD_LETTERS"):
            os.kill(os.getpid(), signal.SIGKILL)  # killed mid-drain, before any commit

    event.listen(store.engine, "before_cursor_execute", die)
    drain_spool(store, redis_client(), Path(sys.argv[1]), batch=4, lease_ms=300)
""")


def test_a_drain_killed_mid_way_leaves_its_records_to_the_next_drain(store_env: Env,
                                                                     tmp_path: Path) -> None:
    client = store_env.client
    client.rpush(keys.DLQ_SPOOL, *[rec(f"c{i}").to_json() for i in range(6)])
    crashed = subprocess.run([sys.executable, "-c", CRASHING_DRAIN,
                              str(tmp_path / "none.jsonl")], cwd=ROOT,
                             env=store_env.process_env(), capture_output=True, timeout=60)
    assert crashed.returncode == -9, crashed.stderr.decode()[-2000:]
    assert client.llen(keys.DLQ_SPOOL) == 2  # 4 were taken by the drain that died
    store = DeadLetterStore()

    def drained_all() -> bool:  # the dead drain's lease expires, then its batch is taken over
        drain_spool(store, client, tmp_path / "none.jsonl", batch=4)
        return store.count() == 6

    wait_for(drained_all, timeout=10, what="the dead drain's records taken over")
    assert not client.keys(keys.PREFIX + "dlq:spool:*")  # nothing left behind in Redis
