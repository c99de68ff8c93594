"""Application schedules (`SLUICE_SCHEDULES_FILE`): the tick grid and the missed-run policy
as pure functions, the file's validation, firing through the gate with a stepped clock, and
real beats: both priorities fire at NORMAL, LOW is shed at SHED while CRITICAL goes on, two
beats (and a takeover) enqueue each tick once, a bad file stops beat naming the entry."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from producers import default_producer
from schedules.beat import APP_ENTRY, build_schedule
from schedules.definitions import AppSchedule, load_schedules, read_schedules
from schedules.firing import FireOutcome, fire_due, fire_one, schedule_state, tick_key
from schedules.status import schedule_rows
from schedules.timing import Missed, Timing, cron_problem, parse_every, plan_ticks
from sluice import keys
from sluice.app import app
from sluice.connections import redis_client
from sluice.errors import InvalidSchedules
from sluice.priorities import QUEUES, PressureLevel
from sluice.settings import load_settings
from tests.conftest import Env, Processes, reset_all
from tests.services import wait_for

T0 = dt.datetime(2026, 1, 1, 6, 0, tzinfo=dt.UTC).timestamp()  # a Thursday, 06:00 UTC
DAY = 86400.0

GOOD = """
[schedules.nightly-report]
task = "report.generate"
payload = { report = "daily", period = "yesterday" }
cron = "0 6 * * *"
priority = "HIGH"
missed = "once"

[schedules.crm-pipeline]
every = "15m"
[[schedules.crm-pipeline.steps]]
task = "data.sync"
payload = { source = "crm", destination = "warehouse" }
[[schedules.crm-pipeline.steps]]
task = "export.csv"
payload = { dataset = "crm" }
merge = ["rows"]
"""

BAD = """
[schedules.nightly]
task = "report.generat"
cron = "0 6 * * *"

[schedules.emails]
task = "email.send"
payload = { to = "not-an-address", subject = 5 }
every = "1h"

[schedules.cron-typo]
task = "cleanup.run"
payload = { target = "tmp" }
cron = "61 6 * * *"
crn = "x"

[schedules.both]
task = "cleanup.run"
payload = { target = "tmp" }
every = "0s"
missed = "twice"
priority = "URGENT"

[schedules.flow]
every = "1m"
steps = [{ task = "data.sync", payload = { source = "a" }, merge = true },
         { task = "export.csv", payload = { rows = -1 }, merge = ["rows"] }]
"""


# -- pure: the grid, the missed-run policy ---------------------------------------------------

@pytest.mark.parametrize("text, seconds", [("15m", 900), ("90s", 90), ("1h30m", 5400),
                                           ("1d", 86400), (" 2H ", 7200), (60, 60)])
def test_every_reads_durations(text: object, seconds: int) -> None:
    assert parse_every(text) == seconds


@pytest.mark.parametrize("text", ["0s", "abc", "15x", "", "1.5m", 0.5, True, "m15", -5])
def test_every_refuses_what_is_no_duration_of_a_second_or_more(text: object) -> None:
    with pytest.raises(ValueError, match="every"):
        parse_every(text)


@pytest.mark.parametrize("expr, ok", [("0 6 * * *", True), ("*/15 * * * *", True),
                                      ("@daily", True), ("61 * * * *", False),
                                      ("* * * * * *", False), ("", False), (5, False)])
def test_cron_expressions_have_five_valid_fields(expr: object, ok: bool) -> None:
    assert (cron_problem(expr) is None) is ok


@pytest.mark.parametrize("timing, t, prev, nxt", [
    (Timing(every_s=900), T0, T0, T0 + 900),
    (Timing(every_s=900), T0 + 899.9, T0, T0 + 900),
    (Timing(every_s=1), T0 + 0.5, T0, T0 + 1),
    (Timing(cron="0 6 * * *"), T0, T0, T0 + DAY),
    (Timing(cron="0 6 * * *"), T0 - 0.1, T0 - DAY, T0),
    (Timing(cron="0 6 * * *"), T0 + 3600, T0, T0 + DAY),
    (Timing(cron="*/15 * * * *"), T0 + 901, T0 + 900, T0 + 1800),
])
def test_ticks_lie_on_a_fixed_grid(timing: Timing, t: float, prev: float, nxt: float) -> None:
    assert (timing.prev(t), timing.next(t)) == (prev, nxt)


EVERY_MIN, EVERY_S, DAILY = Timing(every_s=60), Timing(every_s=1), Timing(cron="0 6 * * *")


@pytest.mark.parametrize("timing, missed, last, now, fire, skipped, new_last", [
    # a new schedule fires only a tick of the last second, never its past
    (EVERY_MIN, Missed.ONCE, None, T0 + 0.5, (T0,), 0, T0),
    (EVERY_MIN, Missed.ONCE, None, T0 + 30, (), 0, T0 + 29),
    (EVERY_S, Missed.ONCE, None, T0 + 10.5, (T0 + 10,), 0, T0 + 10),
    # nothing due yet
    (EVERY_MIN, Missed.SKIP, T0, T0 + 59, (), 0, T0),
    # on time, and several ticks within the grace (beat slow, not away)
    (EVERY_MIN, Missed.SKIP, T0, T0 + 60.2, (T0 + 60,), 0, T0 + 60),
    (EVERY_S, Missed.SKIP, T0, T0 + 3.2, (T0 + 1, T0 + 2, T0 + 3), 0, T0 + 3),
    # beat away for an hour: skip drops the missed ticks, once fires the latest of them
    (EVERY_MIN, Missed.SKIP, T0, T0 + 3610, (T0 + 3600,), 59, T0 + 3600),
    (EVERY_MIN, Missed.ONCE, T0, T0 + 3610, (T0 + 3540, T0 + 3600), 58, T0 + 3600),
    # a daily job, beat away for three days, back at noon
    (DAILY, Missed.SKIP, T0, T0 + 3 * DAY + 6 * 3600, (), 3, T0 + 3 * DAY),
    (DAILY, Missed.ONCE, T0, T0 + 3 * DAY + 6 * 3600, (T0 + 3 * DAY,), 2, T0 + 3 * DAY),
    # back just in time
    (DAILY, Missed.SKIP, T0, T0 + DAY + 10, (T0 + DAY,), 0, T0 + DAY),
])
def test_plan_ticks_fires_what_is_due_and_applies_the_missed_policy(
        timing: Timing, missed: Missed, last: float | None, now: float,
        fire: tuple[float, ...], skipped: int, new_last: float) -> None:
    plan = plan_ticks(timing, missed, last, now)
    assert (plan.fire, plan.skipped, plan.last) == (fire, skipped, new_last)


def test_the_beat_schedule_gets_one_entry_for_the_app_schedules_only_with_a_file() -> None:
    assert APP_ENTRY not in build_schedule(load_settings())
    entry = build_schedule(load_settings(schedules_file="s.toml"))[APP_ENTRY]
    assert entry["task"] == "schedules.app_schedules" and entry["schedule"] == 1.0


# -- the file ----------------------------------------------------------------------------------

def test_a_good_file_loads_tasks_and_workflows(sluice_env: Env, tmp_path: Path) -> None:
    path = tmp_path / "schedules.toml"
    path.write_text(GOOD)
    report, pipeline = load_schedules(path, app)
    assert (report.name, report.task, report.priority.name, report.missed) == \
        ("nightly-report", "report.generate", "HIGH", Missed.ONCE)
    assert report.timing == Timing(cron="0 6 * * *")
    assert pipeline.kind == "workflow" and pipeline.timing.every_s == 900
    assert [s.task for s in pipeline.steps] == ["data.sync", "export.csv"]
    assert pipeline.steps[1].merge == ("rows",)
    sample = Path(__file__).resolve().parent.parent / "schedules.example.toml"
    assert len(load_schedules(sample, app)) == 4  # the sample in the repository stays valid


def test_every_problem_of_a_bad_file_is_named_with_its_schedule(sluice_env: Env,
                                                               tmp_path: Path) -> None:
    path = tmp_path / "schedules.toml"
    path.write_text(BAD)
    with pytest.raises(InvalidSchedules) as info:
        load_schedules(path, app)
    problems = "\n".join(info.value.problems)
    for expected in ["schedule 'nightly': unknown task 'report.generat'",
                     "schedule 'emails': payload: to:", "schedule 'emails': payload: subject:",
                     "schedule 'cron-typo': unknown option 'crn' (did you mean 'cron'?)",
                     "schedule 'cron-typo': cron '61 6 * * *' is not a valid",
                     "schedule 'both': every '0s' must be",
                     "schedule 'both': missed must be \"skip\" or \"once\"",
                     "schedule 'both': unknown priority 'URGENT'",
                     "schedule 'flow': step 1 (data.sync): merge: the first step",
                     "schedule 'flow': step 2 (export.csv): payload: dataset: Field required",
                     "schedule 'flow': step 2 (export.csv): payload: rows: Input should be "
                     "greater than or equal to 0"]:
        assert expected in problems, (expected, problems)
    assert len(info.value.problems) == 11, problems
    path.write_text("[schedules.x\n")
    assert "not valid TOML" in read_schedules(path)[1][0]


def test_schedule_check_names_the_problems_and_exits_2(sluice_env: Env, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ops.cli.main import app as cli

    path = tmp_path / "schedules.toml"
    path.write_text(BAD)
    out = CliRunner().invoke(cli, ["schedule", "check", "--file", str(path)])
    assert out.exit_code == 2 and "schedule 'nightly': unknown task" in out.stderr
    path.write_text(GOOD)
    out = CliRunner().invoke(cli, ["schedule", "check", "--json", "--file", str(path)])
    assert out.exit_code == 0, out.output
    rows = {r["schedule"]: r for r in json.loads(out.stdout)}
    assert rows["crm-pipeline"]["fires"] == "data.sync -> export.csv"
    assert rows["nightly-report"]["next_run"].endswith("06:00:00+00:00")


# -- firing through the gate, with a stepped clock --------------------------------------------

def _schedules(tmp_path: Path, text: str) -> list[AppSchedule]:
    path = tmp_path / "schedules.toml"
    path.write_text(text)
    return load_schedules(path, app)


TICKS = """
[schedules.low]
task = "analytics.track"
payload = { event = "tick" }
every = "1m"

[schedules.crit]
task = "audit.record"
payload = { actor = "beat", action = "tick" }
every = "1m"
"""


def _keys(env: Env, queue: str) -> list[str]:
    """The idempotency keys of the schedules' jobs on `queue` (beat's own jobs have none)."""
    headers = [json.loads(m)["headers"] for m in env.client.lrange(queue, 0, -1)]
    return [h["sluice_key"] for h in headers if str(h.get("sluice_key")).startswith("schedule:")]


def test_each_tick_is_enqueued_once_whoever_fires_it(sluice_env: Env, tmp_path: Path) -> None:
    schedules = _schedules(tmp_path, TICKS)
    producer, client = default_producer(), sluice_env.client
    first = fire_due(schedules, producer, client, T0 + 0.3)  # new: the tick at T0 is on time
    assert [(f.schedule, f.outcome) for f in first] == [("low", "accepted"), ("crit", "accepted")]
    assert fire_due(schedules, producer, client, T0 + 0.4) == []  # a second beat: nothing due
    # a beat that fired and died before remembering it: its successor fires the tick again
    client.hdel(keys.APP_SCHEDULES, "low:last_tick", "crit:last_tick")
    again = fire_due(schedules, producer, client, T0 + 0.5)
    assert {f.outcome for f in again} == {FireOutcome.DUPLICATE}
    assert fire_one(schedules[0], T0, producer, client).outcome is FireOutcome.DUPLICATE
    assert _keys(sluice_env, "low") == [tick_key("low", T0)] == ["schedule:low:2026-01-01T06:00:00Z"]
    later = fire_due(schedules, producer, client, T0 + 120.5)
    assert [f.tick for f in later] == [T0 + 120, T0 + 120]  # T0+60 missed: skipped
    assert len(_keys(sluice_env, "critical")) == 2
    state = schedule_state(client, "low")
    assert (state["runs"], state["duplicates"], state["skipped"]) == (2, 1, 1)


def test_a_schedule_fires_a_workflow_once_per_tick(sluice_env: Env, tmp_path: Path) -> None:
    from producers import workflow as wf

    [_, pipeline] = _schedules(tmp_path, GOOD)
    producer, client = default_producer(), sluice_env.client
    first = fire_one(pipeline, T0, producer, client)
    assert first.outcome is FireOutcome.ACCEPTED
    flow = wf.load(client, "crm-pipeline@2026-01-01T06:00:00Z")
    assert flow.origin == "schedule:crm-pipeline" and flow.status[0].task_id == first.task_id
    assert fire_one(pipeline, T0, producer, client).outcome is FireOutcome.DUPLICATE
    assert client.llen("normal") == 1


def test_at_shed_low_firings_are_shed_and_counted_while_critical_ones_go_on(
        sluice_env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICE_SCHEDULES_FILE", str(tmp_path / "schedules.toml"))
    reset_all()
    schedules = _schedules(tmp_path, TICKS)
    producer, client = default_producer(), sluice_env.client
    producer.start()
    client.lpush("normal", *[b"x"] * 5000)
    wait_for(lambda: producer.monitor.level is PressureLevel.SHED, what="level SHED")
    fired = fire_due(schedules, producer, client, T0 + 0.2)
    assert [(f.schedule, f.outcome, f.reason) for f in fired] == [
        ("low", "shed", "QUEUE_PRESSURE"), ("crit", "accepted", None)]
    assert client.llen("low") == 0 and client.llen("critical") == 1
    rows = {r["job"]: r for r in schedule_rows(T0 + 1)}
    assert rows["reconcile"]["kind"] == "maintenance"
    assert (rows["low"]["runs"], rows["low"]["sheds"], rows["low"]["last_outcome"]) == \
        (0, 1, "shed")
    assert (rows["crit"]["runs"], rows["crit"]["sheds"], rows["crit"]["last_outcome"]) == \
        (1, 0, "accepted")
    assert rows["crit"]["next_run"] == "2026-01-01T06:01:00+00:00"
    assert rows["crit"]["schedule"] == "every 60s"


# -- real beats ----------------------------------------------------------------------------------

BEAT_TICKS = TICKS.replace('every = "1m"', 'every = "1s"')
BEATS = dict(reconcile_interval="1", beat_lock_timeout="3", pressure_warning="300",
             pressure_critical="400", pressure_shed="500")


def _state(name: str) -> dict:
    return schedule_state(redis_client(), name)


def test_real_beats_fire_both_priorities_through_the_gate_each_tick_once(
        sluice_env: Env, processes: Processes, tmp_path: Path) -> None:
    path = tmp_path / "schedules.toml"
    path.write_text(BEAT_TICKS)
    beats = [processes.beat(f"beat{i}", schedules_file=str(path), **BEATS) for i in range(2)]
    wait_for(lambda: _state("low")["runs"] >= 2 and _state("crit")["runs"] >= 2, timeout=30,
             what="both schedules fire at NORMAL\n" + beats[0].output()[-2000:])
    holder = wait_for(lambda: next((b for b in beats if "Acquired lock" in b.output()), None),
                      what="the beat holding the lock")
    holder.kill()
    at_kill = _state("crit")["runs"]
    wait_for(lambda: _state("crit")["runs"] >= at_kill + 2, timeout=15,
             what="the other beat takes over")
    sluice_env.client.lpush("normal", *[b"x"] * 600)  # SHED: LOW is shed, CRITICAL is not
    at_shed = _state("crit")["runs"]
    wait_for(lambda: _state("low")["sheds"] >= 2 and _state("crit")["runs"] >= at_shed + 2,
             timeout=15, what="LOW shed, CRITICAL enqueued")
    low, crit = _state("low"), _state("crit")
    assert low["last"]["outcome"] == "shed" and crit["last"]["outcome"] == "accepted"
    for queue, state in (("low", low), ("critical", crit)):  # each tick once
        fired = _keys(sluice_env, queue)
        assert len(fired) == len(set(fired)) == state["runs"], (queue, fired, state)
    assert {q: sluice_env.client.llen(q) for q in QUEUES}["normal"] == 600


def test_a_bad_schedules_file_stops_beat_naming_the_entry(sluice_env: Env, processes: Processes,
                                                          tmp_path: Path) -> None:
    path = tmp_path / "schedules.toml"
    path.write_text(BAD)
    beat = processes.beat(schedules_file=str(path), reconcile_interval="1")
    wait_for(lambda: not beat.alive(), timeout=30, what="beat to stop\n" + beat.output()[-2000:])
    assert beat.proc is not None and beat.proc.returncode != 0
    out = beat.output()
    assert "beat refuses to start" in out and "schedule 'nightly': unknown task" in out
    assert "schedule 'cron-typo': unknown option 'crn'" in out
    assert sluice_env.client.llen("low") == 0
