"""5x overload, side by side: the Sluice gate vs plain Celery `apply_async`, same workers.

    python bench/overload.py [--duration S] [--factor F] [--json PATH] [--plot PATH]

Measures the capacity of a 2-process prefork worker on 20 ms jobs, then runs twice, each on
a fresh Redis: producers offer `factor` x capacity for `duration` seconds with the DESIGN.md
mix (10% CRITICAL, 20% HIGH, 30% NORMAL, 40% LOW), through the gate (Sluice worker: strict
queue order, prefetch 1, late acks) and with plain `apply_async` (plain worker: Celery's
defaults on the same four queues). Afterwards each run waits (bounded) for its CRITICAL jobs;
a job not started by the end counts with the wait it had so far, so the plain run's figures
are lower bounds. Targets: CRITICAL accepted and completed 100%; CRITICAL p99 wait under the
gate <= 1 s and <= 1/10 of plain's; depth bounded near the SHED threshold under the gate.
"""

from __future__ import annotations

import argparse
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from _common import (
    bench_env,
    print_table,
    redis_server,
    start_worker,
    stop,
    temp_dir,
    use_env,
    wait_until,
    write_json,
)

MIX = {"CRITICAL": 0.10, "HIGH": 0.20, "NORMAL": 0.30, "LOW": 0.40}
JOB_S = 0.02
APPS = {"gated": ("sluice.app", ["-I", "bench.tasks"]), "plain": ("bench.tasks:plain", [])}


class Offer:
    """Offered / accepted / shed counts and each accepted job's submit time."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.submitted: dict[str, tuple[str, float]] = {}
        self.lock = threading.Lock()

    def note(self, priority: str, payloads: list[dict], accepted: list[bool]) -> None:
        with self.lock:
            self.counts[f"{priority}:offered"] += len(payloads)
            for p, ok in zip(payloads, accepted, strict=False):
                self.counts[f"{priority}:{'accepted' if ok else 'shed'}"] += 1
                if ok:
                    self.submitted[p["tid"]] = (priority, p["submitted_at"])


def sender(kind: str, url: str) -> Any:
    """(priority, payloads) -> accepted flags, through the gate or plain apply_async."""
    from bench.tasks import plain_app
    from producers import Rejected, default_producer

    if kind == "gated":
        producer = default_producer()
        producer.start()
        return lambda prio, payloads: [not isinstance(o, Rejected) for o in
                                       producer.submit_many("bench.work", payloads,
                                                            priority=prio)]
    task = plain_app(url).tasks["bench.work"]
    queue_of = {p: p.lower() for p in MIX}

    def send(prio: str, payloads: list[dict]) -> list[bool]:
        for p in payloads:
            task.apply_async(args=[p], queue=queue_of[prio])
        return [True] * len(payloads)
    return send


def offer(send: Any, priority: str, rate: float, until: float, out: Offer) -> None:
    """Offer `rate` jobs/s; the count follows the clock, so gate delays add latency only."""
    due, last = 0.0, time.monotonic()
    while time.monotonic() < until:
        now = time.monotonic()
        due, last = due + rate * (now - last), now
        batch = int(due)
        if batch:
            due -= batch
            payloads = [{"submitted_at": time.time(), "priority": priority, "sleep_s": JOB_S,
                         "tid": uuid.uuid4().hex} for _ in range(batch)]
            out.note(priority, payloads, send(priority, payloads))
        time.sleep(0.05)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(kind: str, capacity: float, factor: float, duration: float, tmp: Path) -> dict[str, Any]:
    server = redis_server(tmp / kind)
    env = bench_env(server.url, tmp / kind)
    use_env(env)
    from dlq.migrate import upgrade

    upgrade()
    client = server.client()
    app, extra = APPS[kind]
    worker = start_worker(app, env, tmp / f"{kind}.log", concurrency=2, extra=extra)
    out, depths = Offer(), []
    try:
        time.sleep(3)  # worker start-up, outside the measured window
        send = sender(kind, server.url)
        t0 = time.time()
        until = time.monotonic() + duration
        threads = [threading.Thread(target=offer, args=(send, p, factor * capacity * share,
                                                        until, out)) for p, share in MIX.items()]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            depths.append(sum(client.llen(q) for q in ("critical", "high", "normal", "low")))
            time.sleep(0.25)
        crit = out.counts["CRITICAL:accepted"]
        try:
            wait_until(lambda: int(client.get("bench:done:CRITICAL") or 0) >= crit, 60,
                       "CRITICAL jobs finished")
        except TimeoutError:
            pass
        end = time.time()
        memory_peak = int(client.info("memory")["used_memory_peak"])
        result = summarize(client, out, end, t0)
    finally:
        stop(worker, timeout=10)
        server.stop()
    result["run"] = {"max_depth": max(depths, default=0),
                     "redis_memory_peak_bytes": memory_peak,
                     "critical_timeline": result.pop("critical_timeline")}
    return result


def summarize(client: Any, out: Offer, end: float, t0: float) -> dict[str, Any]:
    per: dict[str, Any] = {}
    started: dict[str, float] = {}
    timeline: list[tuple[float, float]] = []
    for prio in MIX:
        for raw in client.lrange(f"bench:started:{prio}", 0, -1):
            tid, at, wait = raw.decode().split("|")
            started[tid] = float(wait)
    for prio in MIX:
        waits = []
        for tid, (p, submitted_at) in out.submitted.items():
            if p != prio:
                continue
            wait = started.get(tid, end - submitted_at)  # not started: wait so far
            waits.append(wait)
            if prio == "CRITICAL":
                timeline.append((submitted_at - t0, wait))
        per[prio] = {"offered": out.counts[f"{prio}:offered"],
                     "accepted": out.counts[f"{prio}:accepted"],
                     "shed": out.counts[f"{prio}:shed"],
                     "completed": int(client.get(f"bench:done:{prio}") or 0),
                     "wait_p50_s": percentile(waits, 0.50), "wait_p95_s": percentile(waits, 0.95),
                     "wait_p99_s": percentile(waits, 0.99)}
    per["critical_timeline"] = sorted(timeline)
    return per


def measure_capacity(tmp: Path, n: int = 300) -> float:
    server = redis_server(tmp / "capacity")
    env = bench_env(server.url, tmp / "capacity")
    use_env(env)
    import bench.tasks  # noqa: F401
    from dlq.migrate import upgrade
    from producers import default_producer

    upgrade()
    client = server.client()
    default_producer().submit_many("bench.work", [{"submitted_at": 0.0, "priority": "NORMAL",
                                                   "sleep_s": JOB_S}] * n)
    worker = start_worker("sluice.app", env, tmp / "capacity.log", extra=["-I", "bench.tasks"])
    try:
        wait_until(lambda: int(client.get("bench:done:NORMAL") or 0) >= n, 120, "capacity run")
        starts = sorted(float(x.split(b"|")[1])
                        for x in client.lrange("bench:started:NORMAL", 0, -1))
    finally:
        stop(worker, timeout=10)
        server.stop()
    return (len(starts) - 1) / (starts[-1] - starts[0])


def plot(results: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5))
    for kind, style in (("plain", "r."), ("gated", "g.")):
        pts = results["runs"][kind]["critical_timeline"]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], style, markersize=3,
                label=f"{kind}: CRITICAL wait (submit -> start)")
    ax.set_yscale("symlog", linthresh=0.1)
    ax.set_xlabel("seconds since the overload began")
    ax.set_ylabel("wait, s")
    ax.set_title(f"CRITICAL job wait at {results['factor']}x capacity")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--factor", type=float, default=5.0)
    ap.add_argument("--json", default=None)
    ap.add_argument("--plot", default=None)
    args = ap.parse_args()
    tmp = temp_dir("sluice-bench-overload-")
    capacity = measure_capacity(tmp)
    print(f"capacity: {capacity:.1f} jobs/s (2 prefork processes, {JOB_S * 1000:.0f} ms jobs)")
    results: dict[str, Any] = {"capacity_jobs_per_s": capacity, "factor": args.factor,
                               "duration_s": args.duration}
    details = {}
    for kind in ("gated", "plain"):
        results[kind] = run(kind, capacity, args.factor, args.duration, tmp)
        details[kind] = results[kind].pop("run")
    results["runs"] = details  # max depth, memory peak, CRITICAL waits over time
    rows = [{"run": kind, "priority": p, **results[kind][p]} for kind in ("gated", "plain")
            for p in MIX]
    print_table(f"{args.factor}x overload for {args.duration:.0f}s",
                ["run", "priority", "offered", "accepted", "shed", "completed", "wait_p50_s",
                 "wait_p95_s", "wait_p99_s"], rows)
    for kind in ("gated", "plain"):
        print(f"{kind}: max depth {details[kind]['max_depth']}, Redis memory peak "
              f"{details[kind]['redis_memory_peak_bytes'] / 2**20:.1f} MiB")
    g, pl = results["gated"]["CRITICAL"], results["plain"]["CRITICAL"]
    ratio = pl["wait_p99_s"] / max(g["wait_p99_s"], 1e-9)
    results["critical_p99_ratio_plain_over_gated"] = ratio
    print(f"CRITICAL p99: gated {g['wait_p99_s']:.3f}s, plain {pl['wait_p99_s']:.3f}s "
          f"(plain/gated = {ratio:.1f}x; target gated <= 1 s and ratio >= 10)")
    print(f"CRITICAL accepted {g['accepted']}/{g['offered']}, completed {g['completed']}")
    if args.plot:
        plot(results, args.plot)
        print("plot:", args.plot)
    print("JSON:", write_json("overload", results, args.json))


if __name__ == "__main__":
    main()
