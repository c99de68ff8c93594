"""Strict priority, redelivery after a killed worker, pickle refused: real worker processes."""

from __future__ import annotations

import pytest
from kombu.serialization import dumps as serialize
from kombu.transport.virtual.base import Base64
from kombu.utils.json import dumps as to_json

from producers import submit_many
from sluice import keys
from tests.conftest import Env, Processes
from tests.services import wait_for
from workers import effects


def _starts(domain: str) -> list[float]:
    return sorted(r["at"] for r in effects.read(domain))


@pytest.mark.parametrize("older, newer", [
    (("analytics.track", {"event": "e"}, "analytics"), ("audit.record",
                                                         {"actor": "a", "action": "x"}, "audit")),
    (("data.sync", {"source": "a", "destination": "b"}, "data"),
     ("email.send", {"to": "u@x.io", "subject": "s"}, "email")),
], ids=["CRITICAL-before-LOW", "HIGH-before-NORMAL"])
def test_higher_priority_runs_before_older_lower_priority(sluice_env: Env, processes: Processes,
                                                          older: tuple, newer: tuple) -> None:
    """200 lower-priority jobs queued first, then 200 higher: with one worker slot, every
    higher one runs before any lower one (but the one already prefetched)."""
    (low_task, low_payload, low_effects), (high_task, high_payload, high_effects) = older, newer
    submit_many(low_task, [low_payload] * 200)
    submit_many(high_task, [high_payload] * 200)
    processes.worker(concurrency=1)
    wait_for(lambda: len(effects.read(low_effects)) == 200, timeout=90, what="all jobs run")
    high, low = _starts(high_effects), _starts(low_effects)
    assert len(high) == 200
    assert sum(1 for t in low if t < high[-1]) <= 1


def test_killed_worker_job_is_redelivered_and_completes(sluice_env: Env,
                                                        processes: Processes) -> None:
    fast_restore = dict(visibility_timeout="8", retry_backoff_max="1", task_time_limit="6",
                        task_soft_time_limit="5", unacked_restore_interval="1",
                        unacked_restore_throttle="1")
    worker = processes.worker(record_waits="1", **fast_restore)
    [receipt] = submit_many("analytics.track", [{"event": "slow", "work_s": 3}])
    wait_for(lambda: sluice_env.client.llen(keys.waits("LOW")), what="job started")
    worker.kill()
    assert effects.read("analytics") == []
    processes.worker(**fast_restore)
    wait_for(lambda: len(effects.read("analytics")) == 1, timeout=60,
             what=f"job {receipt.task_id} completed after redelivery")


def _pickled_message(queue: str, task_id: str) -> str:
    """A task message whose body is pickled: the kind Sluice must refuse."""
    body = ([{"event": "evil"}], {}, {"callbacks": None, "errbacks": None, "chain": None,
                                      "chord": None})
    content_type, encoding, data = serialize(body, serializer="pickle")
    assert content_type == "application/x-python-serialize"
    headers = {"lang": "py", "task": "analytics.track", "id": task_id, "root_id": task_id,
               "retries": 0, "timelimit": [None, None], "argsrepr": "", "kwargsrepr": ""}
    return to_json({"body": Base64().encode(data), "content-encoding": encoding,
                    "content-type": content_type, "headers": headers, "properties": {
                        "correlation_id": task_id, "delivery_mode": 2, "priority": 0,
                        "body_encoding": "base64", "delivery_tag": task_id,
                        "delivery_info": {"exchange": "sluice", "routing_key": queue}}})


def test_pickle_message_is_refused_not_executed(sluice_env: Env, processes: Processes) -> None:
    from dlq.store import DeadLetterStore

    sluice_env.client.lpush("low", _pickled_message("low", "pickled-1"))
    processes.worker()
    row = wait_for(lambda: _dead_letter("pickled-1"), what="pickle message dead-lettered")
    assert row.reason == "MALFORMED_MESSAGE"
    assert "ContentDisallowed" in row.exc_type
    assert effects.read("analytics") == []
    assert DeadLetterStore().count() == 1


def _dead_letter(task_id: str):  # noqa: ANN202
    from dlq.store import DeadLetterStore
    from sluice.errors import NotFound

    try:
        return DeadLetterStore().get_by_task_id(task_id)
    except NotFound:
        return None
