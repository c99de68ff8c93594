"""Tenants with a real worker: a noisy tenant flooding NORMAL is held to its fair share
(`TENANT_QUOTA`) while quiet tenants' jobs are all accepted and start in time; the tenant
travels with the job, has its own kill switch, and shows in `sluice pressure`."""

from __future__ import annotations

import json
import time

import pytest

from ops.metrics import SluiceCollector
from producers import Rejected, default_producer, submit, submit_many
from producers.killswitch import turn_on
from sluice.settings import get_settings
from tests.conftest import Env, Processes
from tests.services import wait_for
from tests.test_metrics import _scrape
from workers import effects

JOB = {"sleep_s": 0.05}  # demo.flaky: ~15 jobs/s on one worker slot


def test_a_noisy_tenant_is_held_to_its_share_and_quiet_tenants_all_get_through(
        sluice_env: Env, processes: Processes, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICE_MAX_WAIT_NORMAL", "8")
    get_settings.cache_clear()
    processes.worker(concurrency=1, drain_seconds="1")
    producer = default_producer()
    producer.start()
    submit_many("demo.flaky", [JOB] * 60, tenant="warm-up")
    wait_for(lambda: (producer.monitor.current().drain.rate or 0) > 6
             and sluice_env.client.llen("normal") < 15, timeout=20,
             what="a measured drain rate, and the warm-up nearly done")
    noisy: list[str] = []
    quiet: dict[str, float] = {}  # task id -> submitted at
    end = time.monotonic() + 6.0
    rounds = 0
    while time.monotonic() < end:  # noisy: ~100 jobs/s; three quiet tenants: 2 jobs/s each
        if rounds % 5 == 0:  # the quiet tenants are active from the start, as the noisy one
            for tenant in ("q1", "q2", "q3"):
                quiet[submit("demo.flaky", JOB, tenant=tenant).task_id] = time.time()
        noisy += [o.reason if isinstance(o, Rejected) else "accepted"
                  for o in submit_many("demo.flaky", [JOB] * 10, tenant="noisy")]
        rounds += 1
        seen = producer.monitor.snapshot.at  # the offer's pace: a round per tick
        wait_for(lambda seen=seen: producer.monitor.snapshot.at > seen, timeout=5,
                 interval=0.01, what="the gate's next tick")
    assert noisy.count("TENANT_QUOTA") > len(noisy) / 2, noisy
    assert len(quiet) >= 30  # every quiet submission was accepted (none raised)

    def started() -> dict[str, float]:
        return {r["task_id"]: r["at"] for r in effects.read("flaky") if r["task_id"] in quiet}

    wait_for(lambda: len(started()) == len(quiet), timeout=30, what="every quiet job started")
    waits = [started()[tid] - at for tid, at in quiet.items()]
    assert max(waits) <= 8.0, sorted(waits)[-5:]


def test_the_tenant_travels_and_a_tenant_kill_switch_stops_only_that_tenant(
        sluice_env: Env) -> None:
    turn_on(sluice_env.client, "tenant:acme", "abuse")
    with pytest.raises(Rejected) as info:
        submit("data.sync", {"source": "s", "destination": "d"}, tenant="acme")
    assert info.value.reason == "KILL_SWITCH"
    submit("data.sync", {"source": "s", "destination": "d"}, tenant="other")
    [raw] = sluice_env.client.lrange("normal", 0, -1)
    assert json.loads(raw)["headers"]["sluice_tenant"] == "other"
    default_producer().monitor.tick()
    from ops.cli.jobs import _pressure_rows

    rows = _pressure_rows()["tenants"]["NORMAL"]
    assert {r["tenant"] for r in rows} >= {"acme", "other"}
    assert next(r for r in rows if r["tenant"] == "other")["accepted_per_s"] > 0
    text = _scrape(SluiceCollector(background=False))
    assert 'sluice_tenant_accepted_per_second{priority="NORMAL",tenant="other"}' in text
    assert 'sluice_tenant_accepted_per_second{priority="NORMAL",tenant="acme"} 0.0' in text
