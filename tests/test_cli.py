"""The `sluice` command line, run as a user runs it: a subprocess, exit codes, --json."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dlq.store import DeadLetterStore
from ops.embedded import EmbeddedRedis
from tests.conftest import Env
from tests.test_dlq_store import rec

EMAIL = '{"to": "a@b.io", "subject": "hi"}'


def sluice(env: Env, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from ops.cli import main; main()", *args],
                          env=env.process_env(**extra), capture_output=True, text=True,
                          timeout=60)


def test_tasks_lists_every_task_with_priority_and_schema(sluice_env: Env) -> None:
    out = sluice(sluice_env, "tasks", "--json")
    assert out.returncode == 0, out.stderr
    tasks = {t["name"]: t for t in json.loads(out.stdout)}
    assert set(tasks) == {"audit.record", "auth.event", "email.send", "report.generate",
                          "data.sync", "export.csv", "analytics.track", "cleanup.run",
                          "demo.flaky", "workflow.advance"}
    assert tasks["auth.event"]["priority"] == "CRITICAL"
    assert set(tasks["demo.flaky"]["schema"]["properties"]) == {"fail_times", "permanent",
                                                                "sleep_s", "token"}


def test_submit_prints_the_receipt(sluice_env: Env) -> None:
    out = sluice(sluice_env, "submit", "email.send", "--payload", EMAIL, "--key", "k1",
                 "--json")
    assert out.returncode == 0, out.stderr
    [row] = json.loads(out.stdout)
    assert row["queue"] == "high" and row["level"] == "NORMAL" and not row["duplicate"]
    again = json.loads(sluice(sluice_env, "submit", "email.send", "--payload", EMAIL, "--key",
                              "k1", "--json").stdout)[0]
    assert again["duplicate"] and again["task_id"] == row["task_id"]
    assert sluice_env.client.llen("high") == 1


@pytest.mark.parametrize("args, needle", [
    (["submit", "email.send", "--payload", '{"to": "x"}'], "subject"),
    (["submit", "email.send", "--payload", "{not json"], "--payload"),
    (["submit", "emial.send", "--payload", EMAIL], "emial.send"),
    (["submit", "email.send", "--payload", EMAIL, "--priority", "urgent"], "urgent"),
    (["killswitch", "on", "priority:URGENT"], "URGENT"),
    (["dlq", "ls", "--status", "gone"], "--status"),
    (["dlq", "purge", "--older-than", "soon"], "soon"),
    (["dlq", "purge", "--older-than", "99999999d"], "99999999d"),
    (["submit", "email.send", "--payload", EMAIL, "--countdown", "1e12"],
     "SLUICE_VISIBILITY_TIMEOUT"),
    (["schedule", "run", "reconcil"], "reconcil"),
])
def test_bad_input_is_a_usage_error_naming_the_problem(sluice_env: Env, args: list[str],
                                                       needle: str) -> None:
    out = sluice(sluice_env, *args)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert needle in out.stderr
    assert sum(sluice_env.client.llen(q) for q in ("critical", "high", "normal", "low")) == 0


def test_a_rejected_submission_exits_3_with_reason_and_retry_after(sluice_env: Env) -> None:
    sluice_env.client.lpush("low", *[b"x"] * 5000)
    out = sluice(sluice_env, "submit", "email.send", "--payload", EMAIL)
    assert out.returncode == 3
    assert "QUEUE_PRESSURE" in out.stderr and "Retry-After" in out.stderr
    assert sluice(sluice_env, "submit", "auth.event", "--payload",
                  '{"user_id": "u", "kind": "login"}').returncode == 0


def test_killswitch_on_ls_off(sluice_env: Env) -> None:
    assert sluice(sluice_env, "killswitch", "on", "task:email.send", "--reason",
                  "smtp down").returncode == 0
    listed = json.loads(sluice(sluice_env, "killswitch", "ls", "--json").stdout)
    assert listed == [{"target": "task:email.send", "reason": "smtp down"}]
    out = sluice(sluice_env, "submit", "email.send", "--payload", EMAIL)
    assert out.returncode == 3 and "KILL_SWITCH" in out.stderr
    assert sluice(sluice_env, "killswitch", "off", "task:email.send").returncode == 0
    assert json.loads(sluice(sluice_env, "killswitch", "ls", "--json").stdout) == []


def test_dlq_commands(sluice_env: Env) -> None:
    store = DeadLetterStore()
    store.record_many([rec(f"d{i}", task="demo.flaky") for i in range(3)])
    from sqlalchemy import update

    from dlq.models import DeadLetter

    with store.engine.begin() as conn:
        conn.execute(update(DeadLetter).values(payload={}))
    rows = json.loads(sluice(sluice_env, "dlq", "ls", "--json").stdout)
    assert len(rows) == 3
    for key in ("id", "task_id", "task_name", "queue", "priority", "status", "reason"):
        assert key in rows[0]
    first = rows[0]["id"]
    [shown] = json.loads(sluice(sluice_env, "dlq", "show", str(first), "--json").stdout)
    assert shown["traceback"] and shown["id"] == first
    by_task_id = sluice(sluice_env, "dlq", "show", rows[0]["task_id"], "--json")  # as logged
    assert json.loads(by_task_id.stdout)[0]["id"] == first
    assert sluice(sluice_env, "dlq", "show", "9999").returncode == 1
    out = sluice(sluice_env, "dlq", "replay", str(first), "--json")
    assert out.returncode == 0 and json.loads(out.stdout)[0]["outcome"] == "replayed"
    again = sluice(sluice_env, "dlq", "replay", str(first))
    assert again.returncode == 1 and "replayed" in again.stderr
    assert sluice(sluice_env, "dlq", "discard", str(rows[1]["id"])).returncode == 0
    out = sluice(sluice_env, "dlq", "replay", "--all", "--json")
    assert json.loads(out.stdout) == [{"replayed": 1}]
    stats = json.loads(sluice(sluice_env, "dlq", "stats", "--json").stdout)
    assert stats["by_status"] == {"replayed": 2, "discarded": 1}
    assert "purged 0" in sluice(sluice_env, "dlq", "purge", "--older-than", "7d").stdout


def test_pressure_schedule_doctor_metrics(sluice_env: Env) -> None:
    sluice_env.client.lpush("normal", *[b"x"] * 600)
    p = json.loads(sluice(sluice_env, "pressure", "--json").stdout)
    assert p["level"] == "WARNING" and p["depths"]["normal"] == 600 and p["depth"] == 600
    assert p["thresholds"] == {"warning": 500, "critical": 1000, "shed": 5000}
    watch = sluice(sluice_env, "pressure", "--watch", "--count", "2", "--interval", "0.05")
    assert watch.returncode == 0 and "WARNING" in watch.stdout
    jobs = json.loads(sluice(sluice_env, "schedule", "ls", "--json").stdout)
    assert [j["job"] for j in jobs] == ["reconcile", "retry-dead-letters", "purge-dead-letters"]
    assert all(j["runs"] == 0 for j in jobs)
    doctor = sluice(sluice_env, "doctor", "--json")
    assert doctor.returncode == 0, doctor.stdout
    assert {r["check"] for r in json.loads(doctor.stdout)} >= {"redis", "database",
                                                               "migrations", "outbox", "spool"}
    text = sluice(sluice_env, "metrics", "--once").stdout
    assert 'sluice_queue_depth{queue="normal"} 600.0' in text


def test_doctor_fails_on_a_dead_database_and_never_prints_secrets(sluice_env: Env,
                                                                  tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "pw-redis", password="hunter2-secret").start()
    try:
        out = sluice(sluice_env, "doctor", SLUICE_REDIS_URL=server.url,
                     SLUICE_DATABASE_URL="postgresql://u:pg-secret-pw@127.0.0.1:1/x")
        assert out.returncode == 1
        assert "hunter2-secret" not in out.stdout + out.stderr
        assert "pg-secret-pw" not in out.stdout + out.stderr
        assert "database" in out.stdout
    finally:
        server.stop()


def test_bad_settings_fail_naming_the_setting(sluice_env: Env) -> None:
    out = sluice(sluice_env, "pressure", SLUICE_PRESSURE_WARNING="2000")
    assert out.returncode == 2 and "SLUICE_PRESSURE_WARNING" in out.stderr


def test_a_misspelt_setting_is_refused_naming_the_right_one(sluice_env: Env) -> None:
    out = sluice(sluice_env, "pressure", SLUICE_VISIBILTY_TIMEOUT="5")
    assert out.returncode == 2
    assert "SLUICE_VISIBILTY_TIMEOUT" in out.stderr and "SLUICE_VISIBILITY_TIMEOUT" in out.stderr


def test_an_operator_runs_a_beat_job_now(sluice_env: Env) -> None:
    out = sluice(sluice_env, "schedule", "run", "reconcile", "--json")
    assert out.returncode == 0, out.stderr
    assert "lost_resent" in json.loads(out.stdout)[0]
    jobs = {j["job"]: j for j in json.loads(sluice(sluice_env, "schedule", "ls",
                                                   "--json").stdout)}
    assert jobs["reconcile"]["runs"] == 1
