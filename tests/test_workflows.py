"""Workflows: steps validated and merged (pure), submitted through the gate with their
headers and keys, continued by the worker's hook, waiting with backoff when shed, named on
their dead letters and resumed by a replay; the 0003 migration; and a real worker running a
three-step workflow whose failing middle step is dead-lettered, then replayed to the end."""

from __future__ import annotations

import base64
import datetime as dt
import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest

from dlq.replay import replay_one
from dlq.store import DeadLetterStore
from producers import Rejected, default_producer, submit_workflow
from producers import workflow as wf
from sluice import keys
from sluice.app import app
from sluice.errors import InvalidWorkflow, NotFound
from sluice.priorities import PressureLevel
from sluice.records import DeadLetterRecord
from tests.conftest import Env, Processes, reset_all
from tests.services import wait_for
from workers import effects
from workers.workflow import advance, name_workflow_step, shed_backoff, step_succeeded

SYNC = {"task": "data.sync", "payload": {"source": "crm", "destination": "dwh"}}
EXPORT = {"task": "export.csv", "payload": {"dataset": "crm"}, "merge": ["rows"]}
CLEANUP = {"task": "cleanup.run", "payload": {"target": "tmp"}}


def _messages(env: Env, queue: str) -> list[dict[str, Any]]:
    """The queue's messages, oldest first: headers and the decoded payload."""
    out = []
    for raw in reversed(env.client.lrange(queue, 0, -1)):
        message = json.loads(raw)
        body = json.loads(base64.b64decode(message["body"]))
        out.append({"headers": message["headers"], "payload": body[0][0] if body[0] else None})
    return out


# -- pure ------------------------------------------------------------------------------------

def test_every_problem_of_a_workflow_is_named_by_step() -> None:
    steps, problems = wf.parse_steps([SYNC, {"task": 5, "colour": "red"}, "x",
                                      {"task": "export.csv", "merge": "yes"}])
    assert problems == ["step 2: unknown option 'colour' (one of task, payload, priority, merge)",
                        "step 2: task must be a task name",
                        "step 3: must be a table with a task (got str)",
                        "step 4: merge must be true, false or a list of field names"]
    steps, _ = wf.parse_steps([{**SYNC, "merge": True, "payload": {"source": ""}},
                               {"task": "nope.task"},
                               {"task": "export.csv", "payload": {}, "merge": ["rows", "size"]},
                               {"task": "export.csv", "payload": {"rows": -1}, "merge": True}])
    problems = wf.check_steps(app, steps)
    assert problems[0] == "step 1 (data.sync): merge: the first step has no step before it to merge"
    assert "step 1 (data.sync): payload: source: String should have at least 1 character" in \
        problems
    assert "step 2 (nope.task): unknown task 'nope.task'" in problems[2]
    # a field a merge may supply is not missing; one it cannot supply is
    assert "step 3 (export.csv): merge: 'size' is not a field of export.csv" in problems
    assert "step 3 (export.csv): payload: dataset: Field required" in problems
    assert not any(p.startswith("step 4") and "dataset" in p for p in problems)
    assert "step 4 (export.csv): payload: rows: Input should be greater than or equal to 0" in \
        problems
    assert wf.check_steps(app, []) == ["a workflow needs at least one step"]


@pytest.mark.parametrize("merge, previous, expected", [
    (False, {"rows": 5}, {"dataset": "crm"}),
    (True, {"rows": 5, "dataset": "other"}, {"dataset": "other", "rows": 5}),
    (("rows",), {"rows": 5, "dataset": "other"}, {"dataset": "crm", "rows": 5}),
    (("rows",), {"size": 5}, {"dataset": "crm"}),
    (True, "ok", {"dataset": "crm"}),  # a result that is not a dict adds nothing
    (True, None, {"dataset": "crm"}),
])
def test_merge_takes_the_previous_result_into_the_payload(merge: Any, previous: Any,
                                                          expected: dict) -> None:
    step = wf.Step(task="export.csv", payload={"dataset": "crm"}, merge=merge)
    assert wf.merged_payload(step, previous) == expected


@pytest.mark.parametrize("attempt, retry_after, cap, expected", [
    (0, 0.5, 600, 1), (1, 0.5, 600, 2), (3, 0.5, 600, 8), (3, 30, 600, 30), (12, 0, 600, 600),
    (4, 900, 600, 600)])
def test_a_shed_step_waits_longer_each_time(attempt: int, retry_after: float, cap: float,
                                            expected: float) -> None:
    assert shed_backoff(attempt, retry_after, cap) == expected


# -- through the gate, continued by the hook (in-process) -----------------------------------

def test_submit_workflow_sends_the_first_step_with_its_headers_and_key_once(
        sluice_env: Env) -> None:
    receipt = submit_workflow([SYNC, EXPORT], workflow_id="wf-1")
    assert (receipt.workflow_id, receipt.steps, receipt.duplicate) == ("wf-1", 2, False)
    [message] = _messages(sluice_env, "normal")
    headers = message["headers"]
    assert (headers["sluice_workflow"], headers["sluice_workflow_step"]) == ("wf-1", 1)
    assert headers["sluice_key"] == "workflow:wf-1:1" and message["payload"] == SYNC["payload"]
    assert submit_workflow([SYNC, EXPORT], workflow_id="wf-1").duplicate
    assert sluice_env.client.llen("normal") == 1
    with pytest.raises(InvalidWorkflow, match="exists with other steps"):
        submit_workflow([SYNC], workflow_id="wf-1")
    flow = wf.load(sluice_env.client, "wf-1")
    assert [s.state for s in flow.status] == ["queued", "pending"] and flow.state == "running"
    assert flow.status[0].task_id == receipt.first.task_id and flow.status[0].queue == "normal"
    with pytest.raises(InvalidWorkflow) as info:
        submit_workflow([SYNC, {"task": "export.csv", "payload": {}}], workflow_id="bad id")
    assert len(info.value.problems) == 2 and "bad id" in info.value.problems[0]


def test_secret_fields_of_later_steps_are_kept_sealed(sluice_env: Env,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    mail = {"task": "email.send", "payload": {"to": "a@b.io", "subject": "done",
                                              "smtp_password": "hunter2-canary"}}
    submit_workflow([SYNC, mail], workflow_id="wf-s")
    stored = sluice_env.client.hget(keys.workflow("wf-s"), "spec")
    assert b"hunter2-canary" not in stored and b"sluice-sealed:" in stored
    assert submit_workflow([SYNC, mail], workflow_id="wf-s").duplicate  # same steps
    monkeypatch.setenv("SLUICE_SECRET_KEY", "")
    reset_all()
    with pytest.raises(InvalidWorkflow, match="step 2 .* SLUICE_SECRET_KEY"):
        submit_workflow([SYNC, mail])


def test_sluice_submit_workflow_and_workflow_show(sluice_env: Env, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ops.cli.main import app as cli
    from ops.cli.main import exit_code

    path = tmp_path / "flow.json"
    path.write_text(json.dumps({"id": "nightly-1", "steps": [SYNC, EXPORT]}))
    out = CliRunner().invoke(cli, ["submit-workflow", str(path), "--json"])
    assert out.exit_code == 0, out.output
    [row] = json.loads(out.stdout)
    assert (row["workflow_id"], row["steps"], row["queue"]) == ("nightly-1", 2, "normal")
    out = CliRunner().invoke(cli, ["workflow", "show", "nightly-1", "--json"])
    steps = json.loads(out.stdout)
    assert [(s["step"], s["task"], s["state"]) for s in steps] == [
        (1, "data.sync", "queued"), (2, "export.csv", "pending")]
    assert steps[0]["task_id"] == row["task_id"] and steps[1]["merge"] == ["rows"]
    path.write_text(json.dumps([{"task": "export.csv"}]))
    out = CliRunner().invoke(cli, ["submit-workflow", str(path)])  # main() maps the errors
    assert isinstance(out.exception, InvalidWorkflow) and exit_code(out.exception) == 2
    assert "step 1 (export.csv): payload: dataset" in str(out.exception)
    out = CliRunner().invoke(cli, ["workflow", "show", "nope"])
    assert isinstance(out.exception, NotFound) and exit_code(out.exception) == 1


def test_a_step_that_succeeds_submits_the_next_with_its_result_merged(sluice_env: Env) -> None:
    producer = default_producer()
    submit_workflow([SYNC, EXPORT], workflow_id="wf-2")
    first = wf.StepRef("wf-2", 1)
    assert step_succeeded(first, {"rows": 7, "other": 1}, producer, 100.0) == "submitted"
    [message] = _messages(sluice_env, "normal")[1:]
    assert message["payload"] == {"dataset": "crm", "rows": 7}
    assert message["headers"]["sluice_workflow_step"] == 2
    # a redelivered first step (its result skipped: None) submits nothing more
    assert step_succeeded(first, None, producer, 101.0) == "submitted"
    assert sluice_env.client.llen("normal") == 2
    assert step_succeeded(wf.StepRef("wf-2", 2), None, producer, 102.0) == "finished"
    flow = wf.load(sluice_env.client, "wf-2")
    assert flow.state == "succeeded" and flow.results == {1: {"rows": 7, "other": 1}}
    assert step_succeeded(wf.StepRef("gone", 1), None, producer, 103.0) == "unknown"


def test_a_shed_step_waits_visibly_and_is_submitted_when_the_gate_lets_it(
        sluice_env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICE_PRESSURE_DWELL", "0")
    reset_all()
    producer = default_producer()
    producer.start()
    submit_workflow([SYNC, {**CLEANUP, "priority": "LOW"}], workflow_id="wf-3")
    sluice_env.client.lpush("normal", *[b"x"] * 5000)
    wait_for(lambda: producer.monitor.level is PressureLevel.SHED, what="level SHED")
    assert step_succeeded(wf.StepRef("wf-3", 1), None, producer, 100.0) == "waiting"
    step = wf.load(sluice_env.client, "wf-3").status[1]
    assert (step.state, step.reason, step.attempts) == ("waiting", "QUEUE_PRESSURE", 1)
    [advancer] = _messages(sluice_env, "critical")  # CRITICAL: never shed; it retries later
    assert advancer["headers"]["task"] == wf.ADVANCE_TASK and advancer["headers"]["eta"]
    assert advancer["payload"] == {"workflow": "wf-3", "step": 2, "previous": None}
    with pytest.raises(Rejected):  # still shed: the advancer retries with a longer delay
        advance(producer, "wf-3", 2, None, 101.0)
    assert wf.load(sluice_env.client, "wf-3").status[1].attempts == 2
    sluice_env.client.delete("normal")
    wait_for(lambda: producer.monitor.level is PressureLevel.NORMAL, what="level NORMAL")
    assert advance(producer, "wf-3", 2, None, 102.0) == "submitted"
    assert advance(producer, "wf-3", 2, None, 103.0) == "queued"  # once
    assert [m["payload"] for m in _messages(sluice_env, "low")] == [CLEANUP["payload"]]


def test_a_step_shed_for_too_long_becomes_a_dead_letter_whose_replay_tries_again(
        sluice_env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    from workers.workflow import ADVANCE_RETRIES, advance_task

    monkeypatch.setenv("SLUICE_PRESSURE_DWELL", "0")
    reset_all()
    producer, store = default_producer(), DeadLetterStore()
    producer.start()
    submit_workflow([SYNC, CLEANUP], workflow_id="wf-5")
    sluice_env.client.lpush("normal", *[b"x"] * 5000)
    wait_for(lambda: producer.monitor.level is PressureLevel.SHED, what="level SHED")
    result = advance_task.apply(args=[{"workflow": "wf-5", "step": 2}])  # retries run at once
    assert result.state == "FAILURE" and type(result.result).__name__ == "StepShed"
    [row] = store.list()
    assert (row.task_name, row.workflow, row.reason) == (wf.ADVANCE_TASK,
                                                         {"id": "wf-5", "step": 2}, "EXHAUSTED")
    step = wf.load(sluice_env.client, "wf-5").status[1]
    assert step.state == "dead-lettered" and step.attempts == ADVANCE_RETRIES + 1
    sluice_env.client.delete("normal")
    wait_for(lambda: producer.monitor.level is PressureLevel.NORMAL, what="level NORMAL")
    outcome = replay_one(store, producer, row.id)
    [message] = [m for m in _messages(sluice_env, "critical")
                 if m["headers"]["id"] == outcome.task_id]
    assert message["payload"]["step"] == 2 and "sluice_workflow" not in message["headers"]


def test_a_dead_step_is_named_on_its_dead_letter_and_a_replay_resumes_it(
        store_env: Env) -> None:
    producer, store = default_producer(), DeadLetterStore()
    submit_workflow([SYNC, {**CLEANUP, "priority": "HIGH"}], workflow_id="wf-4")
    step_succeeded(wf.StepRef("wf-4", 1), None, producer, 100.0)
    task_id = wf.load(store_env.client, "wf-4").status[1].task_id
    assert task_id is not None
    # the worker's request is not at hand here (as under a hard time limit): found by task id
    record = name_workflow_step(DeadLetterRecord(
        task_id=task_id, task_name="cleanup.run", queue="high", priority="HIGH",
        payload=CLEANUP["payload"], exc_type="OSError", exc_message="disk full",
        reason="EXHAUSTED", tenant="acme"))
    assert record.workflow == {"id": "wf-4", "step": 2}
    store.record(record)
    row = store.get_by_task_id(task_id)
    assert (row.workflow, row.tenant) == ({"id": "wf-4", "step": 2}, "acme")
    store.record(DeadLetterRecord(task_id=task_id, task_name="cleanup.run", queue="high",
                                  priority="HIGH", payload=CLEANUP["payload"], exc_type="E",
                                  exc_message="again", attempts=5))
    assert store.get_by_task_id(task_id).workflow == {"id": "wf-4", "step": 2}  # kept
    flow = wf.load(store_env.client, "wf-4")
    assert flow.state == "dead-lettered" and flow.status[1].dead_letter == task_id
    outcome = replay_one(store, producer, row.id)
    replayed = [m for m in _messages(store_env, "high") if m["headers"]["id"] == outcome.task_id]
    assert replayed[0]["headers"]["sluice_workflow"] == "wf-4"
    assert replayed[0]["headers"]["sluice_workflow_step"] == 2
    step = wf.load(store_env.client, "wf-4").status[1]
    assert (step.state, step.task_id) == ("queued", outcome.task_id)
    assert step.reason == f"replay of dead letter {row.id}"


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_migration_0003_adds_tenant_and_workflow_and_keeps_the_rows(
        kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    from sqlalchemy import create_engine, text

    from dlq.migrate import current_revision, upgrade

    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'old.db'}"
    else:
        name = "m_" + uuid.uuid4().hex[:12]
        request.getfixturevalue("postgres").execute(f"CREATE DATABASE {name}")
        url = request.getfixturevalue("postgres").url(name)
    eng = create_engine(url)
    try:
        upgrade(eng, "0002")
        with eng.begin() as conn:
            conn.execute(text(
                "INSERT INTO dead_letters (task_id, task_name, queue, priority, payload, "
                "exc_type, exc_message, traceback, attempts, first_failed_at, last_failed_at, "
                "status, reason, retryable, replay_count, updated_at, generation) VALUES "
                "('old', 'email.send', 'high', 'HIGH', '{}', 'E', 'm', '', 2, :t, :t, "
                "'pending', '', true, 0, :t, 0)"), {"t": dt.datetime.now(dt.UTC)})
        upgrade(eng)
        assert current_revision(eng) == "0003"
        row = DeadLetterStore(eng).get_by_task_id("old")
        assert (row.tenant, row.workflow, row.attempts) == (None, None, 2)
    finally:
        eng.dispose()


def test_an_unknown_workflow_is_not_found(sluice_env: Env) -> None:
    with pytest.raises(NotFound, match="no workflow 'nope'"):
        wf.load(sluice_env.client, "nope")


# -- a real worker ------------------------------------------------------------------------------

def test_three_steps_run_in_order_on_their_queues_and_a_replay_finishes_a_dead_step(
        sluice_env: Env, processes: Processes) -> None:
    report = Path(sluice_env.data_dir) / "report.jsonl"
    report.mkdir(parents=True)  # report.generate cannot append its line: it fails, for good
    processes.worker(concurrency=2, retry_backoff_base="0")
    receipt = submit_workflow([SYNC, {"task": "report.generate", "payload": {"report": "daily"}},
                               CLEANUP])
    store = DeadLetterStore()
    [row] = wait_for(lambda: [r for r in store.list() if r.workflow], timeout=30,
                     what="the middle step dead-lettered")
    assert row.workflow == {"id": receipt.workflow_id, "step": 2}
    assert (row.task_name, row.queue, row.reason) == ("report.generate", "high", "EXHAUSTED")
    flow = wf.load(sluice_env.client, receipt.workflow_id)
    assert [s.state for s in flow.status] == ["succeeded", "dead-lettered", "pending"]
    assert flow.state == "dead-lettered"
    from typer.testing import CliRunner

    from ops.cli.main import app as cli

    shown = json.loads(CliRunner().invoke(cli, ["workflow", "show", receipt.workflow_id,
                                                "--json"]).stdout)
    assert shown[1]["dead_letter_id"] == row.id and "IsADirectoryError" in shown[1]["reason"]
    shutil.rmtree(report)  # the cause is fixed: a replay resumes the workflow
    replay_one(store, default_producer(), row.id)
    wait_for(lambda: wf.load(sluice_env.client, receipt.workflow_id).state == "succeeded",
             timeout=30, what="the workflow finished after the replay")
    flow = wf.load(sluice_env.client, receipt.workflow_id)
    assert [s.queue for s in flow.status] == ["normal", "high", "low"]
    done = [effects.read(d)[-1]["at"] for d in ("data", "report", "cleanup")]
    assert done == sorted(done)
