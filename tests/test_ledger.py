"""The ledger of accepted jobs: the pure verdict, and recovery against a real Redis."""

from __future__ import annotations

import json

from delivery.ledger import KEEP_STARTED_S, forget, judge, recover_lost, resend, survey
from producers import submit
from sluice import keys
from tests.conftest import Env


def test_judge_needs_two_sightings_confirm_apart() -> None:
    v = judge(["a", "b", "c"], present={"a"}, suspects={"c": 90.0}, now=100.0, confirm_s=5)
    assert v.resend == {"c"} and v.suspects == {"b": 100.0}
    v = judge(["b"], present=set(), suspects={"b": 100.0}, now=103.0, confirm_s=5)
    assert v.resend == frozenset() and v.suspects == {"b": 100.0}
    assert judge(["b"], present={"b"}, suspects={"b": 1.0}, now=200.0, confirm_s=5).suspects == {}


def test_every_accepted_job_is_in_the_ledger_until_it_ends(sluice_env: Env) -> None:
    receipt = submit("email.send", {"to": "a@b.io", "subject": "s"})
    queue, _, message = sluice_env.client.hget(keys.LEDGER, receipt.task_id).decode().partition(
        "\n")
    assert queue == "high" and message == sluice_env.client.lindex("high", 0).decode()
    forget(sluice_env.client, [receipt.task_id])
    assert not sluice_env.client.hexists(keys.LEDGER, receipt.task_id)
    at = sluice_env.client.zscore(keys.LEDGER_AT, receipt.task_id)
    soon, later = at + 31, at + 31 + KEEP_STARTED_S
    assert recover_lost(sluice_env.client, soon) == 0  # ended: only its index is left,
    assert sluice_env.client.zscore(keys.LEDGER_AT, receipt.task_id) == at  # kept for a fence
    assert recover_lost(sluice_env.client, later) == 0
    assert sluice_env.client.zscore(keys.LEDGER_AT, receipt.task_id) is None  # then dropped


def test_a_job_lost_in_flight_is_resent_once_confirmed(sluice_env: Env) -> None:
    client = sluice_env.client
    lost = submit("email.send", {"to": "a@b.io", "subject": "lost"})
    queued = submit("email.send", {"to": "a@b.io", "subject": "queued"})
    client.rpop("high")  # a worker BRPOPped `lost` and died before recording it
    now = float(client.zscore(keys.LEDGER_AT, lost.task_id)) + 60
    assert recover_lost(client, now, grace_s=30, confirm_s=5) == 0  # first sighting
    assert recover_lost(client, now + 2, grace_s=30, confirm_s=5) == 0
    assert recover_lost(client, now + 6, grace_s=30, confirm_s=5) == 1
    ids = [json.loads(m)["headers"]["id"] for m in client.lrange("high", 0, -1)]
    assert sorted(ids) == sorted([lost.task_id, queued.task_id])
    assert recover_lost(client, now + 7, grace_s=30, confirm_s=5) == 0  # present again


def test_a_reserved_job_is_not_resent(sluice_env: Env) -> None:
    client = sluice_env.client
    receipt = submit("email.send", {"to": "a@b.io", "subject": "reserved"})
    raw = client.rpop("high")
    client.hset(keys.KOMBU_UNACKED, "tag-1", json.dumps([json.loads(raw), "sluice", "high"]))
    now = float(client.zscore(keys.LEDGER_AT, receipt.task_id)) + 60
    for step in (0, 10, 20):
        assert recover_lost(client, now + step, grace_s=30, confirm_s=5) == 0


def test_two_reconcile_runs_at_once_resend_a_lost_job_once(sluice_env: Env) -> None:
    client = sluice_env.client
    lost = submit("email.send", {"to": "a@b.io", "subject": "lost"})
    client.rpop("high")  # lost in flight
    now = float(client.zscore(keys.LEDGER_AT, lost.task_id)) + 60
    survey(client, now, grace_s=30, confirm_s=5)  # first sighting
    seen = client.hgetall(keys.LEDGER_SUSPECTS)
    first = survey(client, now + 6, grace_s=30, confirm_s=5)  # two runs judge at once: the
    client.hset(keys.LEDGER_SUSPECTS, mapping=seen)  # second read what the first read...
    second = survey(client, now + 6, grace_s=30, confirm_s=5)
    assert set(first.resend) == set(second.resend) == {lost.task_id}
    assert resend(client, first, now + 6) + resend(client, second, now + 6) == 1  # ...one send
    assert client.llen("high") == 1
