"""`sluice demo`: priority shedding, end to end, on an embedded Redis and a SQLite store.

Starts a Redis, a worker pool, beat, Flower and `sluice server` (its console URL and a fresh
operator token are printed as soon as it answers); offers a burst at about five times the
workers' capacity with a mix of priorities (10% CRITICAL, 20% HIGH, 30% NORMAL, 40% LOW) and
a few jobs that fail into the dead-letter store; shows depth, level and accepted / delayed /
shed per priority live; then prints a summary and stops everything it started (in a
terminal, after Ctrl-C: the console and Flower stay up to be looked at).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet

from ops import processes
from ops.cli.output import console, table
from ops.embedded import EmbeddedRedis, free_port
from ops.state import reset_process_state
from sluice.priorities import PressureLevel, Priority

__all__ = ["run_demo"]

MIX = {Priority.CRITICAL: 0.10, Priority.HIGH: 0.20, Priority.NORMAL: 0.30, Priority.LOW: 0.40}
JOB_S = 0.02  # each demo job's work
FACTOR = 5.0  # offered load / capacity
#: the depth table, in seconds of this machine's measured capacity (`_calibrate`): the burst
#: reaches SHED on a fast machine as on a loaded one
LEVELS_S = {"PRESSURE_WARNING": 0.5, "PRESSURE_CRITICAL": 1.0, "PRESSURE_SHED": 2.0}
DEMO_SETTINGS = {"PRESSURE_DWELL": "1.0", "PRESSURE_INTERVAL": "0.2", "RECORD_WAITS": "1",
                 "DRAIN_SECONDS": "5", "RETRY_BACKOFF_BASE": "1", "RECONCILE_INTERVAL": "5",
                 # HIGH may wait 30 s (not 10): enough backlog forms in a 20 s burst for the
                 # depth table to reach SHED; NORMAL and LOW are refused for their deadlines
                 "MAX_WAIT_HIGH": "30"}


@dataclass
class Tally:
    """Per-priority counts of the producer side, shared by the load threads."""

    counts: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, priority: Priority, outcome: str, n: int = 1) -> None:
        with self.lock:
            self.counts[f"{priority.name}:{outcome}"] += n

    def get(self, priority: Priority, outcome: str) -> int:
        return self.counts[f"{priority.name}:{outcome}"]


class Stack:
    """The processes of the demo; stopped in reverse order, by PID."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root, self.env = root, env
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        proc = processes.celery("sluice.app", list(args), self.env, self.root / f"{name}.log")
        self.procs.append(proc)
        return proc

    def spawn(self, name: str, argv: list[str], **extra: str) -> subprocess.Popen[bytes]:
        """A process that is not Celery's (the server), with `extra` in its environment."""
        proc = processes.spawn(argv, self.env | extra, self.root / f"{name}.log")
        self.procs.append(proc)
        return proc

    def stop(self, timeout: float = 20.0) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # all at once: they drain in parallel
        for proc in reversed(self.procs):
            processes.stop(proc, timeout=timeout)

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]


def _environment(root: Path, redis_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    env.update({f"SLUICE_{k}": v for k, v in DEMO_SETTINGS.items()})
    env.update({"SLUICE_REDIS_URL": redis_url,
                "SLUICE_DATABASE_URL": f"sqlite:///{root / 'sluice.db'}",
                "SLUICE_DATA_DIR": str(root / "data"),
                "SLUICE_SPOOL_PATH": str(root / "spool.jsonl"),
                "REMAP_SIGTERM": "SIGQUIT", "PYTHONUNBUFFERED": "1",
                # a key of its own for the run: tasks with secret fields need one
                "SLUICE_SECRET_KEY": os.environ.get("SLUICE_SECRET_KEY")
                or Fernet.generate_key().decode(),
                # the demo's Flower listens on 127.0.0.1 only: let its API answer there
                "FLOWER_UNAUTHENTICATED_API": "true"})
    return env


def _offer(producer: Any, priority: Priority, rate: float, until: float, tally: Tally,
           stop: threading.Event) -> None:
    """Offer `rate` jobs/s of `priority` until `until`. The offered count follows the clock,
    so a gate delay makes the next batch bigger: delays add latency, not less load."""
    tick, n, due, last = 0.1, 0, 0.0, time.monotonic()
    while not stop.is_set() and time.monotonic() < until:
        started = time.monotonic()
        due += rate * (started - last)
        last = started
        batch = int(due)
        if batch == 0:
            stop.wait(tick)
            continue
        due -= batch
        payloads = [{"sleep_s": JOB_S, "permanent": (n + i) % 97 == 0} for i in range(batch)]
        n += batch
        tally.add(priority, "offered", batch)
        for out in producer.submit_many("demo.flaky", payloads, priority=priority):
            if isinstance(out, Exception):
                tally.add(priority, "shed")
            else:
                tally.add(priority, "accepted")
                tally.add(priority, "delayed", 1 if out.delayed_ms else 0)
        stop.wait(max(0.0, tick - (time.monotonic() - started)))


def _view(snapshot: Any, tally: Tally, elapsed: float, phase: str) -> Any:
    rows = [{"priority": p.name, "offered": tally.get(p, "offered"),
             "accepted": tally.get(p, "accepted"), "delayed": tally.get(p, "delayed"),
             "shed": tally.get(p, "shed"), "depth": snapshot.depths.get(p.queue, 0)}
            for p in Priority]
    title = (f"t={elapsed:5.1f}s  {phase}  depth {snapshot.depth}  level "
             f"[bold]{snapshot.level.name}[/bold]")
    return table(rows, ["priority", "offered", "accepted", "delayed", "shed", "depth"], title)


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _summary(client: Any, tally: Tally) -> list[dict[str, Any]]:
    from dlq.store import DeadLetterStore
    from sluice import keys

    dead = DeadLetterStore().stats()["by_priority"]
    rows = []
    for p in Priority:
        waits = [float(x.split(b":")[1]) for x in client.lrange(keys.waits(p.name), 0, -1)]
        p50, p99 = _percentile(waits, 0.50), _percentile(waits, 0.99)
        rows.append({"priority": p.name, "offered": tally.get(p, "offered"),
                     "accepted": tally.get(p, "accepted"), "shed": tally.get(p, "shed"),
                     "started": len(waits), "wait_p50_s": None if p50 is None else round(p50, 3),
                     "wait_p99_s": None if p99 is None else round(p99, 3),
                     "dead_letters": dead.get(p.name, 0)})
    return rows


def _calibrate(client: Any, concurrency: int) -> float:
    """Jobs/s this machine's demo worker starts, measured on a short preloaded batch (the
    burst is a multiple of it, the levels are seconds of it): a loaded machine gets a
    smaller burst, not a different show."""
    from producers import default_producer, reset_default_producer
    from sluice import keys

    n = 40 * concurrency
    before = int(client.get(keys.STARTED) or 0)
    started = time.monotonic()
    default_producer().submit_many("demo.flaky", [{"sleep_s": JOB_S}] * n, priority="LOW")
    _wait(lambda: int(client.get(keys.STARTED) or 0) - before >= n, 60, "calibration batch")
    reset_default_producer()
    client.delete(*(keys.waits(p.name) for p in Priority))  # the summary counts the burst
    nominal = concurrency / JOB_S
    return min(nominal, n / (time.monotonic() - started))


def run_demo(duration: float = 30.0, plot: str | None = None, concurrency: int = 2,
             as_json: bool = False, hold: bool = False) -> int:
    """Run the showcase for about `duration` seconds; returns the exit code."""
    root = Path(tempfile.mkdtemp(prefix="sluice-demo-"))
    redis_server = EmbeddedRedis(root / "redis")
    stack: Stack | None = None
    try:
        redis_server.start()
        env = _environment(root, redis_server.url)
        os.environ.update({k: v for k, v in env.items() if k.startswith("SLUICE_")})
        stack = Stack(root, env)
        result = _run(root, stack, env, duration, concurrency, plot, as_json)
        if hold and not as_json:
            _hold()
        return 0 if result else 1
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: stopping everything[/yellow]")
        return 130
    finally:
        if stack is not None:
            stack.stop()
        redis_server.stop()
        shutil.rmtree(root, ignore_errors=True)


def _run(root: Path, stack: Stack, env: dict[str, str], duration: float, concurrency: int,
         plot: str | None, as_json: bool) -> bool:
    from rich.live import Live

    from dlq.migrate import upgrade
    from producers import default_producer, reset_default_producer
    from sluice import keys
    from sluice.connections import redis_client, reset

    reset()
    reset_default_producer()
    upgrade()
    flower_port = free_port()
    stack.start("worker", "worker", "-Q", "critical,high,normal,low", "-c", str(concurrency),
                "-n", "demo@localhost", "-l", "info", "--without-mingle", "--without-gossip")
    client = redis_client()
    _wait(lambda: client.get(keys.worker_state("demo@localhost")) == b"ready", 60, "worker")
    capacity = _calibrate(client, concurrency)
    levels = {k: str(max(10, round(v * capacity))) for k, v in LEVELS_S.items()}
    stack.env.update({f"SLUICE_{k}": v for k, v in levels.items()})
    os.environ.update({f"SLUICE_{k}": v for k, v in levels.items()})
    reset_process_state()  # the producers below read the thresholds just set
    stack.start("beat", "beat", "-l", "info", "-s", str(root / "beat-schedule"))
    stack.start("flower", "flower", "--address=127.0.0.1", f"--port={flower_port}")
    server_url, token = _start_server(stack, flower_port)
    if not as_json:  # now, while it runs: afterwards Flower is gone
        console.print(f"Flower: http://127.0.0.1:{flower_port} (its API too: loopback only, "
                      "no credentials in the demo)")
    _wait(lambda: _answers(f"{server_url}/health"), 60, "sluice server")
    if not as_json:
        console.print(f"Console: {server_url}/console/  operator token: {token}  "
                      f"(API docs: {server_url}/docs)", highlight=False, soft_wrap=True)
    producer = default_producer()
    producer.start()
    tally, stop, timeline = Tally(), threading.Event(), []
    t0 = time.monotonic()
    burst_end = t0 + duration * 0.45
    threads = [threading.Thread(target=_offer, args=(producer, p, FACTOR * capacity * share,
                                                      burst_end, tally, stop), daemon=True)
               for p, share in MIX.items()]
    for t in threads:
        t.start()
    reached: set[PressureLevel] = set()
    quiet = as_json or not console.is_terminal
    with Live(console=console, auto_refresh=False, transient=False) as live:
        while True:
            now = time.monotonic()
            snap = producer.monitor.snapshot
            reached.add(snap.level)
            phase = "burst" if now < burst_end else "draining"
            timeline.append(_sample(now - t0, snap, tally))
            if not quiet:
                live.update(_view(snap, tally, now - t0, phase), refresh=True)
            back_to_normal = now >= burst_end and snap.level is PressureLevel.NORMAL
            if (back_to_normal and PressureLevel.SHED in reached) or now - t0 > duration * 2:
                break
            time.sleep(0.25)
    stop.set()
    for t in threads:
        t.join(5)
    _wait(lambda: sum(snap_depths(client)) == 0, 30, "queues drained")
    final_level = producer.monitor.snapshot.level
    producer.close()
    rows = _summary(client, tally)
    ok = (PressureLevel.SHED in reached and final_level is PressureLevel.NORMAL
          and rows[0]["offered"] == rows[0]["accepted"])
    report = {"priorities": rows, "reached_levels": sorted(l.name for l in reached),
              "final_level": final_level.name, "flower_url": f"http://127.0.0.1:{flower_port}",
              "server_url": server_url,
              "capacity_jobs_per_s": capacity, "factor": FACTOR, "pids": stack.pids(), "ok": ok}
    if plot:
        _plot(timeline, plot)
        report["plot"] = plot
    _print_report(report, as_json)
    return ok


def _start_server(stack: Stack, flower_port: int) -> tuple[str, str]:
    """`sluice server` on a free loopback port with one fresh operator token (the demo's
    only: it is printed, and forgotten when the demo ends). Returns (URL, token)."""
    port, token = free_port(), secrets.token_urlsafe(24)
    stack.spawn("server", [sys.executable, "-c", "from ops.cli import main; main()", "server",
                           "--host", "127.0.0.1", "--port", str(port), "--no-access-log"],
                SLUICE_API_TOKENS=json.dumps({token: {"role": "operator", "name": "demo"}}),
                SLUICE_SERVER_FLOWER_URL=f"http://127.0.0.1:{flower_port}")
    return f"http://127.0.0.1:{port}", token


def _answers(url: str) -> bool:
    import urllib.request

    with urllib.request.urlopen(url, timeout=2) as resp:
        return bool(resp.status == 200)


def _hold() -> None:
    """With `--hold`, keep every process up (the console, Flower) until Ctrl-C."""
    console.print("The console and Flower stay up: Ctrl-C stops everything.")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


def snap_depths(client: Any) -> list[int]:
    from sluice.priorities import QUEUES

    pipe = client.pipeline(transaction=False)
    for q in QUEUES:
        pipe.llen(q)
    return [int(n) for n in pipe.execute()]


def _sample(t: float, snap: Any, tally: Tally) -> dict[str, Any]:
    with tally.lock:
        counts = dict(tally.counts)
    return {"t": t, "depth": snap.depth, "level": snap.level.name, "counts": counts}


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"demo: timed out waiting for {what}")


def _print_report(report: dict[str, Any], as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(report) + "\n")
        return
    console.print(table(report["priorities"], ["priority", "offered", "accepted", "shed",
                                               "started", "wait_p50_s", "wait_p99_s",
                                               "dead_letters"], "summary"))
    console.print(f"levels reached: {', '.join(report['reached_levels'])}; final level "
                  f"{report['final_level']}")
    console.print(f"Flower (while the demo runs): {report['flower_url']}; console: "
                  f"{report['server_url']}/console/")
    if report.get("plot"):
        console.print(f"plot written to {report['plot']}")
    console.print("[green]demo ok[/green]" if report["ok"] else "[red]demo failed[/red]")


def _plot(timeline: list[dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t"] for s in timeline]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    ax1.plot(t, [s["depth"] for s in timeline], label="depth")
    lv = ax1.twinx()
    lv.step(t, [PressureLevel[s["level"]].value if s["level"] != "UNKNOWN" else None
                for s in timeline], where="post", color="red", label="level")
    lv.set_yticks([0, 1, 2, 3], ["NORMAL", "WARNING", "CRITICAL", "SHED"])
    ax1.set_ylabel("jobs waiting")
    ax1.set_title("queue depth and pressure level")
    for p in Priority:
        for outcome, style in (("accepted", "-"), ("shed", ":")):
            series = [s["counts"].get(f"{p.name}:{outcome}", 0) for s in timeline]
            rate = [0.0] + [(b - a) / max(1e-6, t2 - t1) for a, b, t1, t2 in
                            zip(series, series[1:], t, t[1:], strict=False)]
            ax2.plot(t, rate, style, label=f"{p.name} {outcome}")
    ax2.set_ylabel("jobs/s")
    ax2.set_xlabel("seconds")
    ax2.legend(ncol=4, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
