"""Running it for real: the Procfile and docker-compose.yml agree, Flower needs credentials,
the metrics endpoint shows every metric, and the demo runs unattended."""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import jsonschema
import pytest
import yaml

from sluice.embedded import free_port
from sluice.settings import Settings
from tests.conftest import Env, Processes
from tests.services import ROOT, stop_process, wait_for

SPEC = ROOT / ".venv" / "compose_spec.json"


def procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip())


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_file_is_valid_against_the_compose_specification() -> None:
    assert SPEC.exists(), "make test downloads the Compose schema to .venv/compose_spec.json"
    jsonschema.Draft7Validator(json.loads(SPEC.read_text())).validate(compose())


def test_compose_and_procfile_run_the_same_processes() -> None:
    services = compose()["services"]
    assert set(services) == {"redis", "postgres", "migrate", "worker", "worker-critical",
                             "beat", "flower", "metrics"}
    for name, command in procfile().items():
        if name == "redis":
            continue
        svc = services[name.replace("_", "-")]
        ours = [a for a in shlex.split(command) if not a.startswith("--address")]
        theirs = [a for a in shlex.split(svc["command"]) if a not in ("--address", "0.0.0.0")
                  and a not in ("--host",)]
        assert ours == theirs, name
    assert services["migrate"]["command"] == "sluice db upgrade"
    assert services["migrate"]["restart"] == "no"


def test_compose_uses_only_settings_that_exist_and_outlasts_the_drain() -> None:
    fields = {f"SLUICE_{name.upper()}" for name in Settings.model_fields}
    env = compose()["x-sluice-env"]
    assert set(env) <= fields, set(env) - fields
    drain = float(env["SLUICE_DRAIN_SECONDS"])
    for name in ("worker", "worker-critical"):
        svc = compose()["services"][name]
        assert float(svc["stop_grace_period"].rstrip("s")) > drain
        assert "healthcheck" in svc and svc["restart"] == "unless-stopped"
    redis_cmd = compose()["services"]["redis"]["command"]
    assert "--appendonly yes" in redis_cmd and "REDIS_APPENDFSYNC" in redis_cmd
    assert "requirepass" in redis_cmd


def _get(url: str, auth: str | None = None) -> int:
    req = urllib.request.Request(url)
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _procfile_process(env: Env, name: str, *extra: str, **environ: str) -> subprocess.Popen:
    args = shlex.split(procfile()[name]) + list(extra)
    bindir = Path(sys.executable).parent
    return subprocess.Popen(args, env=env.process_env(PATH=f"{bindir}:{os.environ['PATH']}",
                                                      **environ),
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            start_new_session=True)


def test_flower_from_the_procfile_requires_credentials(sluice_env: Env) -> None:
    port = free_port()
    proc = _procfile_process(sluice_env, "flower", "--port", str(port),
                             FLOWER_BASIC_AUTH="ops:s3cret")
    try:
        wait_for(lambda: _get(f"http://127.0.0.1:{port}/") in (200, 401), timeout=60,
                 what="flower up")
        assert _get(f"http://127.0.0.1:{port}/") == 401
        assert _get(f"http://127.0.0.1:{port}/", "ops:wrong") == 401
        assert _get(f"http://127.0.0.1:{port}/", "ops:s3cret") == 200
    finally:
        stop_process(proc, timeout=10)  # Flower can take long to stop: SIGKILL after 10 s


def test_flower_refuses_a_public_binding_without_credentials(sluice_env: Env) -> None:
    out = subprocess.run([sys.executable, "-c", "from sluice.cli import main; main()",
                          "flower", "--address", "0.0.0.0"], env=sluice_env.process_env(),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "FLOWER_BASIC_AUTH" in out.stderr


def _metric(text: str, name: str, labels: str = "") -> float:
    match = re.search(rf"^{re.escape(name)}{re.escape(labels)} ([0-9.e+-]+)$", text, re.M)
    assert match, f"{name}{labels} missing"
    return float(match.group(1))


def test_metrics_endpoint_shows_each_metric(sluice_env: Env, processes: Processes) -> None:
    from dlq.store import DeadLetterStore
    from producers import Rejected, default_producer, submit, submit_many
    from tests.test_dlq_store import rec

    DeadLetterStore().record_many([rec("m1"), rec("m2")])
    processes.worker(retry_backoff_base="0")
    submit("demo.flaky", {"fail_times": 2})
    submit_many("analytics.track", [{"event": "e"}] * 3)
    wait_for(lambda: sluice_env.client.hget("sluice:stats:retries", "demo.flaky") == b"2",
             what="retries counted")
    processes.stop_all()
    sluice_env.client.lpush("normal", *[b"x"] * 600)
    default_producer().monitor.tick()
    with pytest.raises(Rejected):
        submit("analytics.track", {"event": "shed"})
    submit("email.send", {"to": "a@b.io", "subject": "waits"})  # delayed, then queued
    default_producer().close()  # flushes this process's counters
    port = free_port()
    proc = _procfile_process(sluice_env, "metrics", "--port", str(port))
    try:
        text = wait_for(lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                                       timeout=5).read().decode(),
                        timeout=30, what="metrics endpoint")
    finally:
        stop_process(proc, timeout=10)
    assert _metric(text, "sluice_pressure_level") == 1.0
    assert _metric(text, "sluice_queue_depth", '{queue="normal"}') == 600
    assert _metric(text, "sluice_queue_depth", '{queue="critical"}') == 0
    assert _metric(text, "sluice_submissions_total", '{outcome="accepted",priority="LOW"}') == 3
    assert _metric(text, "sluice_submissions_total", '{outcome="shed",priority="LOW"}') == 1
    assert _metric(text, "sluice_retries_total", '{task="demo.flaky"}') == 2
    assert _metric(text, "sluice_dead_letters", '{status="pending"}') == 2
    assert _metric(text, "sluice_outbox_size") == 0
    assert _metric(text, "sluice_spool_size", '{where="redis"}') == 0
    assert _metric(text, "sluice_oldest_job_age_seconds", '{queue="normal"}') == 0
    assert _metric(text, "sluice_oldest_job_age_seconds", '{queue="low"}') == 0
    assert 0 < _metric(text, "sluice_oldest_job_age_seconds", '{queue="high"}') < 60


def test_demo_runs_unattended_and_leaves_no_process(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    out = subprocess.run([sys.executable, "-c", "from sluice.cli import main; main()",
                          "demo", "--duration", "20", "--json", "--plot",
                          str(tmp_path / "demo.png")],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    rows = {r["priority"]: r for r in report["priorities"]}
    assert rows["CRITICAL"]["offered"] == rows["CRITICAL"]["accepted"] > 0
    assert rows["LOW"]["shed"] > 0
    assert "SHED" in report["reached_levels"] and report["final_level"] == "NORMAL"
    assert sum(r["dead_letters"] for r in rows.values()) > 0
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    for pid in report["pids"]:
        assert not Path(f"/proc/{pid}").exists(), f"process {pid} left behind"
