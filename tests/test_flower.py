"""Flower shows the queues: its Broker view and `/api/queues/length` know the four queues and
their real depths, while the workers use Sluice's own transport."""

from __future__ import annotations

import base64
import json
import sys
import urllib.error
import urllib.request

from ops import processes as procs
from ops.embedded import free_port
from producers import submit
from tests.conftest import Env, Processes
from tests.services import wait_for

AUTH = "ops:s3cret"


def _json(url: str) -> object:
    req = urllib.request.Request(url)
    req.add_header("Authorization", "Basic " + base64.b64encode(AUTH.encode()).decode())
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


def _depths(port: int) -> dict[str, int]:
    try:
        data = _json(f"http://127.0.0.1:{port}/api/queues/length")
    except (urllib.error.URLError, OSError, ValueError):
        return {}
    return {q["name"]: q["messages"] for q in data["active_queues"]}  # type: ignore[index]


def test_flower_shows_each_queue_and_its_depth(sluice_env: Env, processes: Processes) -> None:
    processes.worker(concurrency=1, drain_seconds="1")
    busy = submit("demo.flaky", {"sleep_s": 60})  # holds the only slot: the rest stay queued
    wait_for(lambda: not sluice_env.client.llen("normal"), what="the slot taken")
    for i in range(5):
        submit("analytics.track", {"event": f"e{i}"})
    port = free_port()
    flower = procs.spawn(
        [sys.executable, "-c", "from ops.cli import main; main()", "flower",
         "--port", str(port)],
        sluice_env.process_env(FLOWER_BASIC_AUTH=AUTH), sluice_env.tmp / "flower.log")
    try:
        depths = wait_for(lambda: _depths(port).get("low") == 5 and _depths(port), timeout=60,
                          what="flower's queue lengths")
        assert depths == {"critical": 0, "high": 0, "normal": 0, "low": 5}
        assert busy.task_id
    finally:
        procs.stop(flower, timeout=10)
