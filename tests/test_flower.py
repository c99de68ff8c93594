"""Flower shows the queues: its Broker view and `/api/queues/length` know the four queues and
their real depths while the workers use Sluice's own transport; each job's queue (from the
`task-sent` event the producer publishes with the job), its arguments with secrets masked,
and for a dead-lettered job how to replay it."""

from __future__ import annotations

import base64
import json
import signal
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from delivery.sending import MONITOR_KEY, announce_monitor, sent_event_channel
from dlq.store import DeadLetterStore
from ops import processes as procs
from ops.embedded import free_port
from producers import submit
from tests.conftest import Env, Processes
from tests.services import wait_for

AUTH = "ops:s3cret"
QUEUES = ("critical", "high", "normal", "low")
CANARY = "hunter2-canary-7f3a"


def request(url: str, auth: str | None = AUTH, method: str = "GET",
            body: bytes | None = None) -> tuple[int, bytes]:
    """(status, body) of one HTTP request, with basic auth unless `auth` is None."""
    req = urllib.request.Request(url, data=body, method=method)
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def api(port: int, path: str) -> Any:
    """A Flower API answer, as JSON (with the credentials)."""
    status, body = request(f"http://127.0.0.1:{port}{path}")
    assert status == 200, (status, body[:300])
    return json.loads(body)


#: The ways Flower is started: what `sluice flower` runs (the wrapper, then the runner it
#: execs) and plain Celery. Each takes the port and the Flower options.
FLOWER_COMMANDS: dict[str, Callable[[int], list[str]]] = {
    "sluice flower": lambda port: [sys.executable, "-c", "from ops.cli import main; main()",
                                   "flower", "--port", str(port)],
    "python -m ops.flowerconfig": lambda port: [sys.executable, "-m", "ops.flowerconfig",
                                                f"--port={port}"],
    "celery -A sluice.app flower": lambda port: [sys.executable, "-m", "celery", "-A",
                                                 "sluice.app", "flower", f"--port={port}"],
}


def flower_env(env: Env, **extra: str) -> dict[str, str]:
    """The test's environment without any FLOWER_ setting from outside, then `extra`."""
    out = {k: v for k, v in env.process_env().items() if not k.startswith("FLOWER_")}
    return {**out, **extra}


def flower_up(port: int) -> bool:
    """Flower answers (its health check needs no credentials)."""
    try:
        return request(f"http://127.0.0.1:{port}/healthcheck", None)[0] == 200
    except OSError:
        return False


@contextmanager
def running_flower(env: Env, *args: str, command: str = "sluice flower",
                   auth: str | None = AUTH, **extra: str) -> Iterator[int]:
    """Flower started by `command` (as `sluice flower` starts it by default) with `args`,
    FLOWER_BASIC_AUTH=`auth` (none if None) and `extra`, up and answering; yields its port."""
    port = free_port()
    settings = {"FLOWER_BASIC_AUTH": auth} if auth else {}
    proc = procs.spawn([*FLOWER_COMMANDS[command](port), *args],
                       flower_env(env, **settings, **extra), env.tmp / f"flower-{port}.log")
    try:
        wait_for(lambda: proc.poll() is None and flower_up(port),
                 timeout=30, what=f"flower up\n{_log(env, port)}")
        yield port
    finally:
        procs.stop(proc, signal.SIGKILL)  # it keeps nothing; its own stop takes seconds


def _log(env: Env, port: int) -> str:
    path = env.tmp / f"flower-{port}.log"
    return path.read_text()[-3000:] if path.exists() else ""


def listening(port: int) -> None:
    """Wait until Flower sees both ends of a job: the producer's `task-sent` (a job sent
    before Flower subscribed is never seen) and the worker's events. Flower switches those on
    every 5 s; this switches them on now, the same way. Submits a CRITICAL probe until Flower
    shows one with its queue and its success."""
    from sluice.app import app

    def seen() -> bool:
        app.control.enable_events()
        submit("audit.record", {"actor": "probe", "action": "listen"})
        tasks = api(port, "/api/tasks?taskname=audit.record")
        return any(t.get("routing_key") == "critical" and t.get("state") == "SUCCESS"
                   for t in tasks.values())
    wait_for(seen, timeout=20, interval=0.5, what="flower receiving task events")


def enqueue(queue: str, task: str, payload: dict[str, Any]) -> None:
    """Queue a job with Celery's own publish, past the gate: a backlog behind a busy worker is
    what the gate refuses (DEADLINE), and here it is only something for Flower to count."""
    from sluice.app import app

    app.send_task(task, args=[payload], queue=queue)


def _depths(port: int) -> dict[str, int]:
    data = api(port, "/api/queues/length")
    return {q["name"]: q["messages"] for q in data["active_queues"]}


def busy_worker_with_a_backlog(env: Env) -> dict[str, int]:
    """Occupy the only slot of a concurrency-1 worker with a long job, then queue 1, 2, 3
    and 4 jobs on critical, high, normal and low; returns those depths."""
    enqueue("normal", "demo.flaky", {"sleep_s": 60})
    wait_for(lambda: not env.client.llen("normal"), what="the slot taken")
    jobs = {"critical": ("audit.record", {"actor": "a", "action": "x"}),
            "high": ("email.send", {"to": "b@c.io", "subject": "queued"}),
            "normal": ("demo.flaky", {}), "low": ("analytics.track", {"event": "e"})}
    expected = {q: n for n, q in enumerate(QUEUES, start=1)}
    for queue, n in expected.items():
        for _ in range(n):
            enqueue(queue, *jobs[queue])
    assert {q: env.client.llen(q) for q in QUEUES} == expected
    return expected


def test_flower_shows_queues_depths_each_jobs_queue_masked_secrets_and_dead_letters(
        sluice_env: Env, processes: Processes) -> None:
    with running_flower(sluice_env) as port:
        processes.worker(concurrency=1, drain_seconds="1")
        listening(port)
        mail = submit("email.send", {"to": "a@b.io", "subject": "s", "smtp_password": CANARY})
        dead = submit("demo.flaky", {"permanent": True})

        def final(task_id: str, state: str) -> dict[str, Any]:
            info = api(port, f"/api/task/info/{task_id}")
            return info if info.get("state") == state else {}
        info = wait_for(lambda: final(mail.task_id, "SUCCESS"), what="email.send done")
        assert (info["routing_key"], info["exchange"]) == ("high", "sluice")
        assert "'smtp_password': '***'" in info["args"]
        failed = wait_for(lambda: final(dead.task_id, "FAILURE"), what="dead-lettered")
        assert failed["routing_key"] == "normal"
        listed = api(port, "/api/tasks")
        assert {listed[t]["routing_key"] for t in (mail.task_id, dead.task_id)} == {"high",
                                                                                    "normal"}
        assert CANARY not in json.dumps(listed)
        status, page = request(f"http://127.0.0.1:{port}/task/{dead.task_id}")
        assert status == 200 and b"Dead-lettered after 1 attempt(s)" in page
        assert f"sluice dlq show {dead.task_id}".encode() in page
        assert DeadLetterStore().find(dead.task_id).task_id == dead.task_id  # what `show` does

        expected = busy_worker_with_a_backlog(sluice_env)
        assert _depths(port) == expected == {q: sluice_env.client.llen(q) for q in QUEUES}


def test_jobs_carry_their_queue_to_monitors_only_while_one_listens(sluice_env: Env) -> None:
    client = sluice_env.client
    events = client.pubsub()
    events.subscribe(sent_event_channel(client))
    assert events.get_message(timeout=5)["type"] == "subscribe"  # type: ignore[index]
    assert not client.exists(MONITOR_KEY)
    unseen = submit("analytics.track", {"event": "nobody listens"})
    announce_monitor(client, 30)
    seen = submit("email.send", {"to": "a@b.io", "subject": "s", "smtp_password": CANARY})
    message = events.get_message(timeout=5)
    events.close()
    assert message and CANARY.encode() not in message["data"]
    event = json.loads(json.loads(message["data"])["body"])  # pub/sub keeps order: `unseen`
    assert event["uuid"] == seen.task_id != unseen.task_id   # would have come first
    assert (event["type"], event["name"], event["queue"]) == ("task-sent", "email.send", "high")
    assert (event["exchange"], event["routing_key"]) == ("sluice", "high")
    assert "'smtp_password': '***'" in event["args"]
