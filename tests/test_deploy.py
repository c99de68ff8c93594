"""Running it for real: the Procfile and docker-compose.yml agree, Flower needs credentials,
the metrics endpoint shows every metric, and the demo runs unattended."""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import jsonschema
import pytest
import redis
import yaml

from ops.embedded import free_port
from sluice import keys
from sluice.settings import Settings
from tests.conftest import Env, Processes
from tests.services import ROOT, stop_process, wait_for

VENV_BIN = ROOT / ".venv" / "bin"

SPEC = ROOT / ".venv" / "compose_spec.json"


def procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip())


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_file_is_valid_against_the_compose_specification() -> None:
    assert SPEC.exists(), "make test downloads the Compose schema to .venv/compose_spec.json"
    jsonschema.Draft7Validator(json.loads(SPEC.read_text())).validate(compose())


def _procfile_argv(command: str) -> list[str]:
    """A Procfile line as the argv it ends in: without the `sluice wait && exec` that holds
    it until Redis and the schema are ready (compose has `depends_on` for that), and without
    the local port (`--port ${FLOWER_PORT:-5555}`: compose publishes the container's)."""
    args = shlex.split(command)
    if "&&" in args:
        cut = args.index("&&")
        assert args[:cut] == ["sluice", "wait"], command
        args = args[cut + 1:]
        assert args[0] == "exec", command
        args = args[1:]
    out: list[str] = []
    for arg in args:
        if out and out[-1] == "--port":
            out.pop()
        elif not arg.startswith("--address"):
            out.append(arg)
    return out


def test_compose_and_procfile_run_the_same_processes() -> None:
    services = compose()["services"]
    assert set(services) == {"redis", "postgres", "migrate", "worker", "worker-critical",
                             "beat", "flower", "metrics", "server"}
    assert procfile()["redis"] == "sluice redis"  # no redis-server needed on PATH
    for name, command in procfile().items():
        if name == "redis":
            continue
        svc = services[name.replace("_", "-")]
        ours = _procfile_argv(command)
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
    # the password: in the config file its entrypoint writes, never in argv (test_doors.py)
    assert redis_cmd.startswith("redis-server /run/redis-auth/redis.conf ")


def test_the_image_creates_its_data_volume_for_its_user() -> None:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    instructions = [line.strip() for line in text.splitlines()
                    if line.strip() and not line.lstrip().startswith("#")]
    user = instructions.index("USER sluice")
    before = " ".join(instructions[:user])
    assert re.search(r"install -d -o sluice -g sluice [^&]*/var/lib/sluice\b", before), before
    service = compose()["x-sluice-service"]
    assert "sluice-spool:/var/lib/sluice" in service["volumes"]
    for name in ("SLUICE_SPOOL_PATH", "SLUICE_DATA_DIR"):
        assert compose()["x-sluice-env"][name].startswith("/var/lib/sluice/"), name


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
    """One Procfile line, run as honcho runs it: through the shell, in its own session."""
    line = " ".join([procfile()[name], *map(shlex.quote, extra)])
    bindir = Path(sys.executable).parent
    return subprocess.Popen(["/bin/sh", "-c", line],
                            env=env.process_env(PATH=f"{bindir}:{os.environ['PATH']}",
                                                **environ),
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            start_new_session=True)


def _proc_table() -> dict[int, tuple[int, int, str, int]]:
    """Every process now: pid -> (ppid, process group, state, start time in ticks)."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        table[int(entry.name)] = (int(fields[1]), int(fields[2]), fields[0], int(fields[19]))
    return table


def _alive(procs: dict[int, int]) -> dict[int, int]:
    """Those of `procs` (pid -> start time) still running: same pid, same start, no zombie."""
    now = _proc_table()
    return {pid: start for pid, start in procs.items()
            if pid in now and now[pid][3] == start and now[pid][2] != "Z"}


def _group(pgid: int) -> dict[int, int]:
    return {pid: row[3] for pid, row in _proc_table().items()
            if row[1] == pgid and row[2] != "Z"}


def _descendants(root: int) -> dict[int, int]:
    """`root` and every process under it: pid -> start time."""
    table = _proc_table()
    found = {root: table[root][3]} if root in table else {}
    grew = True
    while grew:
        grew = False
        for pid, (ppid, _pgid, _state, start) in table.items():
            if ppid in found and pid not in found:
                found[pid] = start
                grew = True
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def _stop_group(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Stop a Procfile line as honcho does: SIGTERM to its process group, SIGKILL to what is
    left after `timeout`."""
    members = _group(proc.pid)
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        wait_for(lambda: not _alive(members), timeout=timeout, what="process group stopped")
    except TimeoutError:
        for pid in _alive(members):
            os.kill(pid, signal.SIGKILL)
    proc.wait(10)


def test_flower_from_the_procfile_requires_credentials(sluice_env: Env) -> None:
    port = free_port()
    proc = _procfile_process(sluice_env, "flower", FLOWER_PORT=str(port),
                             FLOWER_BASIC_AUTH="ops:s3cret")
    try:
        wait_for(lambda: _get(f"http://127.0.0.1:{port}/") in (200, 401), timeout=60,
                 what="flower up")
        assert _get(f"http://127.0.0.1:{port}/") == 401
        assert _get(f"http://127.0.0.1:{port}/", "ops:wrong") == 401
        assert _get(f"http://127.0.0.1:{port}/", "ops:s3cret") == 200
    finally:
        _stop_group(proc, timeout=10)  # Flower can take long to stop: SIGKILL after 10 s


def test_flower_refuses_a_public_binding_without_credentials(sluice_env: Env) -> None:
    out = subprocess.run([sys.executable, "-c", "from ops.cli import main; main()",
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
    from workers import effects

    DeadLetterStore().record_many([rec("m1"), rec("m2")])
    processes.worker(retry_backoff_base="0")
    submit("demo.flaky", {"fail_times": 2})
    submit_many("analytics.track", [{"event": "e"}] * 3)
    wait_for(lambda: sluice_env.client.hget("sluice:stats:retries", "demo.flaky") == b"2",
             what="retries counted")
    wait_for(lambda: len(effects.read("analytics")) == 3,  # LOW runs last: the queue empties
             what="the LOW jobs ran")
    processes.stop_all()
    sluice_env.client.lpush("normal", *[b"x"] * 600)
    default_producer().monitor.tick()
    with pytest.raises(Rejected):
        submit("analytics.track", {"event": "shed"})
    submit("email.send", {"to": "a@b.io", "subject": "waits"})  # delayed, then queued
    default_producer().close()  # flushes this process's counters
    port = free_port()
    proc = _procfile_process(sluice_env, "metrics", SLUICE_METRICS_PORT=str(port))
    try:
        text = wait_for(lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                                       timeout=5).read().decode(),
                        timeout=30, what="metrics endpoint")
    finally:
        _stop_group(proc, timeout=10)
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
    out = subprocess.run([sys.executable, "-c", "from ops.cli import main; main()",
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


def _plain_env(**extra: str) -> dict[str, str]:
    """A plain shell's environment: no venv activated or on PATH, no SLUICE_/FLOWER_ settings
    from outside; then `extra`."""
    drop = ("VIRTUAL_ENV", "PYTHONHOME", "PYTHONPATH")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLUICE_", "FLOWER_")) and k not in drop}
    venv = VENV_BIN.resolve()
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "/usr/bin:/bin").split(os.pathsep)
        if p and Path(p).resolve() != venv)
    env.update(extra, PYTHONUNBUFFERED="1")
    return env


def test_sluice_redis_runs_in_the_foreground_and_keeps_its_data(tmp_path: Path) -> None:
    port = free_port()
    env = _plain_env(SLUICE_REDIS_URL=f"redis://:s3cret@127.0.0.1:{port}/0",
                     SLUICE_DATA_DIR=str(tmp_path / "data"))
    client = redis.Redis(port=port, password="s3cret", socket_timeout=5)

    def start() -> subprocess.Popen:
        return subprocess.Popen([str(VENV_BIN / "sluice"), "redis"], env=env, cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                start_new_session=True)

    proc = start()
    try:
        wait_for(client.ping, timeout=30, what="sluice redis answers on the URL's port")
        # it is redis-server itself (exec), so honcho's signals reach Redis; the password
        # is in its 0600 config file, not on the command line
        assert _cmdline(proc.pid).split()[0].endswith("redis-server"), _cmdline(proc.pid)
        assert "s3cret" not in _cmdline(proc.pid)
        assert (tmp_path / "data" / "redis" / "redis.conf").stat().st_mode & 0o077 == 0
        assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
        assert client.config_get("appendonly")["appendonly"] == "yes"
        client.set("kept", "yes")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        proc = start()
        wait_for(lambda: client.get("kept") == b"yes", timeout=30, what="data kept (AOF)")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
    finally:
        stop_process(proc, timeout=10)


@pytest.mark.slow
def test_make_up_runs_the_stack_from_a_plain_shell_and_stops_it_all(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 18: a fresh database, no venv on PATH, no redis-server needed: `make up` migrates,
    starts every Procfile process on the ports given, a submitted job runs, Ctrl-C stops all."""
    ports = {name: free_port() for name in ("redis", "metrics", "flower", "server")}
    data = tmp_path / "data"
    env = _plain_env(SLUICE_REDIS_URL=f"redis://127.0.0.1:{ports['redis']}/0",
                     SLUICE_DATABASE_URL=f"sqlite:///{tmp_path / 'sluice.db'}",  # no schema
                     SLUICE_DATA_DIR=str(data), SLUICE_SPOOL_PATH=str(tmp_path / "spool.jsonl"),
                     SLUICE_METRICS_PORT=str(ports["metrics"]), FLOWER_PORT=str(ports["flower"]),
                     SLUICE_SERVER_PORT=str(ports["server"]))
    client = redis.Redis(port=ports["redis"], socket_timeout=5)
    host = socket.gethostname()
    log = tmp_path / "up.log"
    started = time.monotonic()
    with open(log, "wb") as fh:  # `-o`: this test runs in the installed venv; the rest is make up
        make = subprocess.Popen(["make", "-o", ".venv/.installed", "up"], cwd=ROOT, env=env,
                                stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
    seen: dict[int, int] = {}  # every process make up started: pid -> start time

    def output() -> str:
        return "\n" + log.read_text(errors="replace")[-5000:]

    def workers_ready() -> str | bool:
        if make.poll() is not None:
            return "exited"
        seen.update(_descendants(make.pid))
        return all(client.get(keys.worker_state(f"{w}@{host}")) == b"ready"
                   for w in ("worker", "critical")) and "ready"

    try:
        assert wait_for(workers_ready, timeout=90, interval=0.2,
                        what="both workers ready") == "ready", output()
        wait_for(lambda: _get(f"http://127.0.0.1:{ports['flower']}/") == 200, timeout=30,
                 what="flower on FLOWER_PORT")
        wait_for(lambda: _get(f"http://127.0.0.1:{ports['metrics']}/metrics") == 200,
                 timeout=30, what="metrics on SLUICE_METRICS_PORT")
        wait_for(lambda: _get(f"http://127.0.0.1:{ports['server']}/health") == 200,
                 timeout=30, what="sluice server on SLUICE_SERVER_PORT")
        assert (data / "api-tokens.json").stat().st_mode & 0o077 == 0  # its local token

        out = subprocess.run([str(VENV_BIN / "sluice"), "submit", "audit.record", "-p",
                              '{"actor":"a","action":"b"}', "--json"], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        [receipt] = json.loads(out.stdout)
        assert receipt["queue"] == "critical" and not receipt["outboxed"], receipt

        def ran() -> list[dict]:
            with monkeypatch.context() as m:  # read the effects of that data dir, then forget it
                from sluice.settings import get_settings
                from workers import effects

                for key in [k for k in os.environ if k.startswith("SLUICE_")]:
                    m.delenv(key)
                m.setenv("SLUICE_DATA_DIR", str(data))
                get_settings.cache_clear()
                try:
                    return [r for r in effects.read("audit")
                            if r["task_id"] == receipt["task_id"]]
                finally:
                    get_settings.cache_clear()

        [effect] = wait_for(ran, timeout=30, what="the audit job ran" + output())
        assert (effect["actor"], effect["action"]) == ("a", "b")
        assert client.llen("critical") == 0
        assert "stopped (rc=" not in log.read_text(errors="replace"), output()
        seen.update(_descendants(make.pid))
        running = " | ".join(_cmdline(pid) for pid in _alive(seen))
        for what in ("honcho start", "redis-server", "worker", "beat", "flower", "metrics",
                     "server"):
            assert what in running, running

        os.killpg(make.pid, signal.SIGINT)  # Ctrl-C in the terminal that ran `make up`
        make.wait(60)
        wait_for(lambda: not _alive(seen), timeout=5,
                 what=f"every process gone, left: {_alive(seen)}")
        assert not _group(make.pid)
        assert time.monotonic() - started < 90
    finally:
        if make.poll() is None:
            seen.update(_descendants(make.pid))
            os.killpg(make.pid, signal.SIGINT)
            try:
                make.wait(30)
            except subprocess.TimeoutExpired:
                pass
        for pid in _alive(seen):  # by pid and start time: never a recycled pid
            os.kill(pid, signal.SIGKILL)
        make.wait(10)
