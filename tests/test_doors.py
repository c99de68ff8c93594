"""Closed by default: every door Sluice opens, tried from the outside.

Flower (however it is started) answers 401 without credentials, listens on 127.0.0.1 when it
has none, refuses a public address without them, and never applies a task (that would skip
the gate, the kill switches and the ledger); the metrics endpoint listens on 127.0.0.1; Redis,
as the Procfile and compose run it, refuses a client without its password, and no process's
command line (what `ps` shows every user) holds that password."""

from __future__ import annotations

import json
import os
import pwd
import re
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterable
from pathlib import Path

import pytest
import redis

from ops import processes as procs
from ops.cli.stack import redis_config
from ops.embedded import EmbeddedRedis, free_port, redis_binary
from ops.flowerconfig import APPLY_PATHS, LOOPBACK, bind_address
from sluice import keys
from sluice.errors import ConfigError
from sluice.priorities import QUEUES
from tests.conftest import Env
from tests.services import stop_process, wait_for
from tests.test_deploy import _cmdline, _procfile_process, _stop_group, compose
from tests.test_flower import (
    AUTH,
    FLOWER_COMMANDS,
    flower_env,
    flower_up,
    request,
    running_flower,
)

#: `celery -A sluice.app flower` runs our code because the app imports `ops.flowerconfig`
PLAIN_CELERY = "celery -A sluice.app flower"
#: What `sluice flower` execs once its own check passed.
RUNNER = "python -m ops.flowerconfig"


@pytest.mark.parametrize(("address", "authenticated", "expected"), [
    ("127.0.0.1", False, "127.0.0.1"),
    ("localhost", False, "localhost"),
    ("::1", False, "::1"),
    ("", False, "127.0.0.1"),        # Flower's default (every interface) without auth
    ("", True, ""),
    ("0.0.0.0", True, "0.0.0.0"),
    ("10.1.2.3", True, "10.1.2.3"),
])
def test_where_flower_may_listen(address: str, authenticated: bool, expected: str) -> None:
    assert bind_address(address, authenticated) == expected


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "10.1.2.3", "flower.example.com"])
def test_a_public_address_without_auth_is_refused_naming_the_setting(address: str) -> None:
    with pytest.raises(ConfigError, match="FLOWER_BASIC_AUTH"):
        bind_address(address, authenticated=False)


def listening_addresses(port: int) -> set[str]:
    """Every local address a socket listens on at `port` (from /proc/net/tcp and tcp6)."""
    found = set()
    for name, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        for line in Path("/proc/net", name).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            raw, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                packed = bytes.fromhex(raw)
                words = b"".join(packed[i:i + 4][::-1] for i in range(0, len(packed), 4))
                found.add(socket.inet_ntop(family, words))
    return found


def _apply_attempts(port: int, auth: str | None) -> dict[str, tuple[int, bytes]]:
    body = json.dumps({"args": [{"event": "past-the-gate"}]}).encode()
    return {path: request(f"http://127.0.0.1:{port}{path.replace('(.+)', 'analytics.track')}",
                          auth, "POST", body) for path in APPLY_PATHS}


def _nothing_enqueued(env: Env) -> None:
    assert {q: env.client.llen(q) for q in QUEUES} == dict.fromkeys(QUEUES, 0)
    assert not env.client.hlen(keys.LEDGER)


def test_flower_needs_credentials_and_never_applies_a_task(sluice_env: Env) -> None:
    with running_flower(sluice_env) as port:
        base = f"http://127.0.0.1:{port}"
        for path in ("/", "/tasks", "/broker", "/api/workers", "/api/tasks",
                     "/api/queues/length"):
            assert request(base + path, None)[0] == 401, path
            assert request(base + path, "ops:wrong")[0] == 401, path
        assert request(base + "/", AUTH)[0] == 200
        for auth in (AUTH, None):
            for path, (status, body) in _apply_attempts(port, auth).items():
                assert status == 403 and b"gate" in body, (path, status, body[:200])
        # read only by default: no revoke, no worker shutdown, no consumer changes
        assert request(base + "/api/task/revoke/some-id", AUTH, "POST", b"")[0] == 403
        assert request(base + "/api/worker/shutdown/w@h", AUTH, "POST", b"")[0] == 403
    _nothing_enqueued(sluice_env)


@pytest.mark.parametrize("command", [RUNNER, PLAIN_CELERY])
def test_flower_without_credentials_listens_on_loopback_only(sluice_env: Env,
                                                             command: str) -> None:
    # no --address: Flower's own default is every interface
    with running_flower(sluice_env, command=command, auth=None) as port:
        addresses = listening_addresses(port)
        assert addresses and addresses <= LOOPBACK | {"::1"}, addresses
        for _path, (status, _) in _apply_attempts(port, None).items():
            assert status == 403
    _nothing_enqueued(sluice_env)


@pytest.mark.parametrize("command", [RUNNER, PLAIN_CELERY])
def test_flower_refuses_a_public_address_without_credentials(sluice_env: Env,
                                                             command: str) -> None:
    port = free_port()
    log = sluice_env.tmp / f"flower-{port}.log"
    proc = procs.spawn([*FLOWER_COMMANDS[command](port), "--address=0.0.0.0"],
                       flower_env(sluice_env), log)
    try:
        wait_for(lambda: proc.poll() is not None or flower_up(port), timeout=30,
                 what="flower exiting or answering")
        assert proc.poll() == 2 and not flower_up(port), log.read_text()[-2000:]
        assert "FLOWER_BASIC_AUTH" in log.read_text()
    finally:
        procs.stop(proc, signal.SIGKILL)


def test_metrics_listen_on_loopback_by_default(sluice_env: Env) -> None:
    port = free_port()
    proc = procs.spawn([sys.executable, "-c", "from ops.cli import main; main()", "metrics"],
                       sluice_env.process_env(SLUICE_METRICS_PORT=str(port)),
                       sluice_env.tmp / "metrics.log")
    try:
        wait_for(lambda: request(f"http://127.0.0.1:{port}/metrics", None)[0] == 200,
                 timeout=30, what="the metrics endpoint")
        assert listening_addresses(port) == {"127.0.0.1"}
    finally:
        procs.stop(proc, timeout=10)


def _every_command_line() -> dict[int, str]:
    """What `ps` shows: every process's command line, by pid."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (line := _cmdline(int(entry.name))):
            found[int(entry.name)] = line
    return found


def _members(groups: Iterable[int]) -> dict[int, str]:
    """The processes of these process groups now: pid -> command line."""
    found = {}
    for pid, line in _every_command_line().items():
        try:
            if os.getpgid(pid) in groups:
                found[pid] = line
        except ProcessLookupError:  # gone meanwhile
            pass
    return found


def _redis_says(port: int, *commands: str) -> list[bytes]:
    """Redis' first reply line to each inline command, on one plain connection (redis-py
    retries a refused AUTH with backoff: slow, and not what a stranger's client does)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        reader = conn.makefile("rb")
        replies = []
        for command in commands:
            conn.sendall(command.encode() + b"\r\n")
            replies.append(reader.readline().strip())
        return replies


def _refused_without(port: int, password: str) -> None:
    noauth, wrongpass, still = _redis_says(port, "PING", f"AUTH not-{password}", "GET x")
    assert noauth.startswith(b"-NOAUTH") and still.startswith(b"-NOAUTH")
    assert wrongpass.startswith(b"-WRONGPASS")
    assert _redis_says(port, f"AUTH {password}", "PING") == [b"+OK", b"+PONG"]


def test_sluice_redis_serves_other_hosts_only_with_a_password(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="SLUICE_REDIS_URL"):
        redis_config("redis://127.0.0.1:6379/0", tmp_path, bind="0.0.0.0")
    conf = redis_config("redis://:pw%22x@127.0.0.1:6379/0", tmp_path, bind="0.0.0.0")
    assert 'requirepass "pw\\"x"' in conf and "bind 0.0.0.0" in conf


def test_the_embedded_redis_takes_its_password_on_stdin(tmp_path: Path) -> None:
    password = f'pw-{uuid.uuid4().hex}"\\ \u00e9'  # quotes, backslash, space, non-ASCII too
    server = EmbeddedRedis(tmp_path, password=password).start()
    try:
        assert server.client().ping()
        assert _redis_says(server.port, "PING")[0].startswith(b"-NOAUTH")
        assert server.proc is not None and password not in _cmdline(server.proc.pid)
    finally:
        server.stop()


def test_redis_from_the_procfile_requires_its_password_and_no_command_line_shows_it(
        sluice_env: Env, tmp_path: Path) -> None:
    """The Procfile's Redis and Sluice processes, with the password in SLUICE_REDIS_URL (as
    `make up` gives it): every process they start is looked at while it runs."""
    password = f"pw-{uuid.uuid4().hex}"
    port = free_port()
    url = f"redis://:{password}@127.0.0.1:{port}/0"
    env = {"SLUICE_REDIS_URL": url, "SLUICE_DATA_DIR": str(tmp_path / "stack")}
    started = [_procfile_process(sluice_env, "redis", **env)]
    seen: dict[int, str] = {}

    def look() -> dict[int, str]:
        seen.update(_members({p.pid for p in started}))
        return seen
    try:
        client = redis.Redis(port=port, password=password, socket_timeout=5)
        wait_for(lambda: look() and client.ping(), timeout=30, what="the Procfile's redis")
        started += [_procfile_process(sluice_env, name, **env)
                    for name in ("worker", "beat")]
        worker = keys.worker_state(f"worker@{socket.gethostname()}")
        wait_for(lambda: look() and client.get(worker) == b"ready", timeout=60,
                 what="the Procfile's worker ready")
        wait_for(lambda: "celery" in look().get(started[2].pid, "").split()[1],
                 timeout=30, what="beat started, after `sluice wait`")  # sh exec'd it
        assert [line for line in seen.values() if line.split()[0].endswith("redis-server")]
        _refused_without(port, password)
        leaks = {pid: line for pid, line in {**seen, **_every_command_line()}.items()
                 if password in line}
        assert not leaks, leaks
    finally:
        for proc in reversed(started):
            _stop_group(proc, timeout=15)


def _compose_redis(tmp: Path, port: int, password: str) -> subprocess.Popen[bytes]:
    """Compose's redis service run here, as its container would run it: the entrypoint
    script then `command`, with the image's entrypoint reduced to `exec "$@"`, its paths under
    `tmp` and a port of our own."""
    svc = compose()["services"]["redis"]
    assert svc["entrypoint"][:2] == ["/bin/sh", "-c"]
    script, name = svc["entrypoint"][2:]
    here = str(tmp / "run")
    script = script.replace("$$", "$").replace("/run/redis-auth", here)
    command = (svc["command"].replace("${REDIS_APPENDFSYNC:-everysec}", "everysec")
               .replace("/run/redis-auth", here).split())
    bindir = tmp / "bin"
    bindir.mkdir()
    (bindir / "docker-entrypoint.sh").write_text('#!/bin/sh\nexec "$@"\n')
    (bindir / "docker-entrypoint.sh").chmod(0o755)
    try:
        pwd.getpwnam("redis")
    except KeyError:  # the image has the user; a host without redis-server's package may not
        (bindir / "chown").write_text("#!/bin/sh\n")
        (bindir / "chown").chmod(0o755)
    path = f"{bindir}:{Path(redis_binary()).parent}:/usr/bin:/bin"
    return subprocess.Popen(["/bin/sh", "-c", script, name, *command, "--port", str(port),
                             "--bind", "127.0.0.1"], cwd=tmp, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True,
                            env={"PATH": path, "REDIS_PASSWORD": password})


#: a secret compose would write into the text itself (`$$NAME` is left to the shell, which
#: expands it for builtins and the environment, never into another program's arguments)
INTERPOLATED_SECRET = re.compile(r"(?<!\$)\$\{?[A-Z_]*(PASSWORD|SECRET|AUTH|TOKEN)")


def test_compose_never_puts_a_password_on_a_command_line() -> None:
    for name, svc in compose()["services"].items():
        argv = json.dumps([svc.get("command"), svc.get("entrypoint"),
                           svc.get("healthcheck", {}).get("test")])
        assert not INTERPOLATED_SECRET.search(argv), (name, argv)
        assert not re.search(r"--requirepass|--pass\b| -a ", argv), (name, argv)
    assert compose()["services"]["redis"]["command"].startswith(
        "redis-server /run/redis-auth/redis.conf ")


def test_compose_redis_reads_its_password_from_the_file_its_entrypoint_writes(
        tmp_path: Path) -> None:
    password, port = f"pw-{uuid.uuid4().hex}", free_port()
    proc = _compose_redis(tmp_path, port, password)
    try:
        client = redis.Redis(port=port, password=password, socket_timeout=5)
        wait_for(lambda: proc.poll() is None and client.ping(), timeout=20,
                 what="compose's redis")
        _refused_without(port, password)
        conf = tmp_path / "run" / "redis.conf"
        assert conf.stat().st_mode & 0o077 == 0 and password in conf.read_text()
        assert _cmdline(proc.pid).split()[0].endswith("redis-server")
        assert not [line for line in _every_command_line().values() if password in line]
        check = compose()["services"]["redis"]["healthcheck"]["test"]
        assert check[0] == "CMD-SHELL"
        probe = check[1].replace("$$", "$").replace("redis-cli", f"redis-cli -p {port}")
        path = f"{Path(redis_binary()).parent}:/usr/bin:/bin"
        for secret, healthy in ((password, 0), ("wrong", 1)):
            out = subprocess.run(["/bin/sh", "-c", probe], capture_output=True, timeout=10,
                                 env={"PATH": path, "REDIS_PASSWORD": secret})
            assert out.returncode == healthy, out
    finally:
        stop_process(proc, timeout=10)


@pytest.mark.parametrize("password", ["", "has space", 'quote"d', "at@sign"])
def test_compose_redis_refuses_a_password_it_cannot_pass_safely(tmp_path: Path,
                                                                 password: str) -> None:
    proc = _compose_redis(tmp_path, free_port(), password)
    try:
        assert proc.wait(10) == 2
        assert proc.stderr is not None and b"REDIS_PASSWORD" in proc.stderr.read()
    finally:
        stop_process(proc, timeout=5)
