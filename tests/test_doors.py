"""Closed by default: every door Sluice opens, tried from the outside.

Flower (however it is started) answers 401 without credentials, listens on 127.0.0.1 when it
has none, refuses a public address without them, and never applies a task (that would skip
the gate, the kill switches and the ledger); the metrics endpoint listens on 127.0.0.1."""

from __future__ import annotations

import json
import signal
import socket
import sys
from pathlib import Path

import pytest

from ops import processes as procs
from ops.embedded import free_port
from ops.flowerconfig import APPLY_PATHS, LOOPBACK, bind_address
from sluice import keys
from sluice.errors import ConfigError
from sluice.priorities import QUEUES
from tests.conftest import Env
from tests.services import wait_for
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
