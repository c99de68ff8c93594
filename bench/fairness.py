"""Fair under pressure: one noisy tenant against nine quiet ones, gated vs tuned vs plain.

    python bench/fairness.py [--duration S] [--warmup 10] [--noisy 8] [--quiet 0.05] [--deadline 20]
                             [--arms gated,tuned,plain] [--json PATH]

All NORMAL. One noisy tenant offers `--noisy` x the gated worker's capacity, nine quiet
tenants `--quiet` x each, for `--warmup` seconds (not counted: a fresh Redis has no drain
rate yet, and the first seconds measure the gate's cold start) and then `duration` seconds, on a fresh Redis per arm with the same
2-process worker as `bench/overload.py`:

- `gated`: `submit_many(..., tenant=T, deadline=D)` through the Sluice gate (the depth
  table, the predicted wait against the deadline, and the tenants' fair shares);
- `tuned` / `plain`: Celery as an expert configures it / Celery's defaults, `apply_async`
  with `expires=D`: every arm drops a job not started by its deadline.

Per tenant (the quiet ones summed, and the worst quiet tenant): offered, accepted, started in
time, late (accepted, then started after the deadline or never), wait p99. Per arm: goodput
(jobs started in time per second, as a fraction of the arm's capacity). Targets, gated:
every quiet tenant >= 99 % accepted and started in time; goodput >= 90 %.
"""

from __future__ import annotations

import argparse
import logging
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
from overload import APPS, JOB_S, WORKER_PROCESSES, measure_capacity, percentile, read_starts

ARMS = ("gated", "tuned", "plain")
QUIET = [f"quiet-{i}" for i in range(1, 10)]
TARGET_QUIET = 0.99
TARGET_GOODPUT = 0.90


class Tally:
    """Per tenant: offered / accepted / shed counts and each accepted job's submit time."""

    def __init__(self, measure_from: float = 0.0) -> None:
        self.measure_from = measure_from  #: monotonic time: what is offered before is warm-up
        self.window_start = time.time() + max(0.0, measure_from - time.monotonic())
        self.counts: Counter[str] = Counter()
        self.submitted: dict[str, tuple[str, float]] = {}
        self.warm: dict[str, float] = {}  #: warm-up jobs accepted: they count for goodput
        self.lock = threading.Lock()

    def note(self, tenant: str, payloads: list[dict], accepted: list[bool],
             reasons: list[str]) -> None:
        if time.monotonic() < self.measure_from:
            with self.lock:
                self.warm.update((p["tid"], p["submitted_at"])
                                 for p, ok in zip(payloads, accepted, strict=True) if ok)
            return
        with self.lock:
            self.counts[f"{tenant}:offered"] += len(payloads)
            for p, ok in zip(payloads, accepted, strict=True):
                self.counts[f"{tenant}:{'accepted' if ok else 'shed'}"] += 1
                if ok:
                    self.submitted[p["tid"]] = (tenant, p["submitted_at"])
            for reason in reasons:
                self.counts[f"{tenant}:shed:{reason}"] += 1


def sender(arm: str, url: str, deadline: float) -> tuple[Any, Any]:
    """(tenant, payloads) -> (accepted flags, shed reasons); and a closer."""
    from producers import Rejected, default_producer

    if arm == "gated":
        producer = default_producer()
        producer.start()

        def submit(tenant: str, payloads: list[dict]) -> tuple[list[bool], list[str]]:
            outs = producer.submit_many("bench.work", payloads, priority="NORMAL",
                                        deadline=deadline, tenant=tenant)
            return ([not isinstance(o, Rejected) for o in outs],
                    [o.reason for o in outs if isinstance(o, Rejected)])
        return submit, producer

    from bench.tasks import plain_app, tuned_app

    task = (tuned_app if arm == "tuned" else plain_app)(url).tasks["bench.work"]

    def publish(tenant: str, payloads: list[dict]) -> tuple[list[bool], list[str]]:
        for p in payloads:
            task.apply_async(args=[p], queue="normal", expires=deadline)
        return [True] * len(payloads), []
    return publish, task.app


def offer(send: Any, tenants: list[str], rate: float, until: float, out: Tally) -> None:
    """`rate` jobs/s for each of `tenants` until `until`, on the clock (as in overload.py)."""
    due, last = 0.0, time.monotonic()
    while time.monotonic() < until:
        now = time.monotonic()
        due, last = min(due + rate * (now - last), max(rate, 1.0)), now
        batch = int(due)
        if batch:
            due -= batch
            for tenant in tenants:
                payloads = [{"submitted_at": time.time(), "priority": "NORMAL",
                             "sleep_s": JOB_S, "tid": uuid.uuid4().hex} for _ in range(batch)]
                accepted, reasons = send(tenant, payloads)
                out.note(tenant, payloads, accepted, reasons)
        time.sleep(0.05)


def run_arm(arm: str, capacity: float, own: float, args: argparse.Namespace, tmp: Path,
            stats: Any, stats_url: str) -> dict[str, Any]:
    folder = tmp / arm
    server = redis_server(folder)
    env = bench_env(server.url, folder, max_wait_normal=f"{args.deadline:g}")
    env["BENCH_STATS_URL"] = stats_url
    use_env(env)
    if arm == "gated":
        from dlq.migrate import upgrade

        upgrade()
    app, extra = APPS[arm]
    worker = start_worker(app, env, tmp / f"{arm}.log", concurrency=WORKER_PROCESSES,
                          extra=extra)
    send, closer = sender(arm, server.url, args.deadline)
    client = server.client()
    try:
        stats.flushdb()  # the capacity run's records would pass for this worker's first job
        send("warm-up", [{"submitted_at": time.time(), "priority": "NORMAL", "sleep_s": 0,
                          "tid": "warm-up"}])
        wait_until(lambda: stats.llen("bench:started:NORMAL") >= 1, 120, "the first job")
        stats.flushdb()
        out = Tally(measure_from=time.monotonic() + args.warmup)
        until = out.measure_from + args.duration
        threads = [threading.Thread(target=offer, args=(send, ["noisy"],
                                                        args.noisy * capacity, until, out)),
                   threading.Thread(target=offer, args=(send, QUIET, args.quiet * capacity,
                                                        until, out))]
        for t in threads:
            t.start()
        t0, timeline = time.time(), []
        while any(t.is_alive() for t in threads):  # what the gate saw, every quarter second
            snap = closer.monitor.snapshot if arm == "gated" else None
            timeline.append((round(time.time() - t0, 2), sum(client.llen(q) for q in (
                "critical", "high", "normal", "low")), snap and snap.level.name,
                snap and snap.drain.rate and round(snap.drain.rate, 1)))
            time.sleep(0.25)
        # every accepted job is judged: the queues stay empty for 1.5 s (an empty queue
        # alone judged the last job, held by the worker, before it started), or its
        # deadline passes
        stop_by, empty_since = time.time() + args.deadline + 3.0, None
        while time.time() < stop_by:
            empty = not sum(client.llen(q) for q in ("critical", "high", "normal", "low"))
            empty_since = (empty_since or time.time()) if empty else None
            if empty_since and time.time() - empty_since >= 1.5:
                break
            time.sleep(0.25)
        starts = read_starts(stats)
    finally:
        if arm == "gated":
            from producers import reset_default_producer

            reset_default_producer()
        else:
            closer.close()
        stop(worker, timeout=3)
        server.stop()
    result = summarize(out, starts, args.deadline, args.duration, own)
    result["max_depth"] = max((d for _, d, _, _ in timeline), default=0)
    result["levels"] = dict(Counter(level for _, _, level, _ in timeline if level))
    result["timeline"] = timeline  # (s, depth, level, drain rate): the JSON has it all
    return result


def summarize(out: Tally, starts: dict[str, float], deadline: float, duration: float,
              capacity: float) -> dict[str, Any]:
    per: dict[str, dict[str, Any]] = {}
    waits: dict[str, list[float]] = {t: [] for t in ["noisy", *QUIET]}
    in_time: Counter[str] = Counter()
    for tid, (tenant, submitted_at) in out.submitted.items():
        started = starts.get(tid)
        if started is not None:
            waits[tenant].append(started - submitted_at)
            in_time[tenant] += started - submitted_at <= deadline
    for tenant in ["noisy", *QUIET]:
        accepted = out.counts[f"{tenant}:accepted"]
        p99 = percentile(waits[tenant], 0.99)
        per[tenant] = {"offered": out.counts[f"{tenant}:offered"], "accepted": accepted,
                       "shed": out.counts[f"{tenant}:shed"],
                       "shed_reasons": {k.split(":", 2)[2]: v for k, v in out.counts.items()
                                        if k.startswith(f"{tenant}:shed:")},
                       "started_in_time": in_time[tenant], "late": accepted - in_time[tenant],
                       "wait_p99_s": None if p99 is None else round(p99, 3)}
    quiet_ratio = min((per[t]["started_in_time"] / per[t]["offered"]
                       for t in QUIET if per[t]["offered"]), default=0.0)
    # goodput: jobs started in time within the measured window, warm-up jobs included (the
    # workers serve the warm-up's backlog first; that is capacity used, not lost)
    window = (out.window_start, out.window_start + duration)
    submitted = {tid: at for tid, (_, at) in out.submitted.items()} | out.warm
    served = sum(1 for tid, at in submitted.items()
                 if (started := starts.get(tid)) is not None
                 and window[0] <= started <= window[1] and started - at <= deadline)
    goodput = served / duration / capacity
    return {"tenants": per, "worst_quiet_started_in_time_ratio": round(quiet_ratio, 4),
            "goodput_ratio": round(goodput, 4), "capacity_jobs_per_s": round(capacity, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--noisy", type=float, default=8.0, help="x capacity, the noisy tenant")
    ap.add_argument("--quiet", type=float, default=0.05, help="x capacity, each quiet tenant")
    ap.add_argument("--deadline", type=float, default=20.0, help="NORMAL's max wait, seconds")
    ap.add_argument("--warmup", type=float, default=10.0,
                    help="seconds of the same offer before the measured window (0: measure "
                         "the cold start too)")
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--json", default=None, help="default bench/results/fairness.json")
    args = ap.parse_args()
    arms = [a for a in args.arms.split(",") if a]
    if (not set(arms) <= set(ARMS) or not 0 < args.duration <= 600 or args.deadline <= 0
            or not 0 <= args.warmup <= 600):
        ap.error("--arms is a subset of gated,tuned,plain; --duration in (0, 600]; "
                 "--deadline > 0")
    logging.getLogger("sluice.pressure").setLevel(logging.ERROR)
    tmp = temp_dir("sluice-bench-fairness-")
    stats_server = redis_server(tmp / "stats")
    stats = stats_server.client()
    try:
        capacities = {arm: measure_capacity(arm, tmp, stats, stats_server.url)
                      for arm in ARMS if arm == "gated" or arm in arms}
        print("capacity: " + ", ".join(f"{a} {c:.1f}" for a, c in capacities.items())
              + f" jobs/s; noisy offers {args.noisy:g}x, 9 quiet tenants {args.quiet:g}x "
              f"each, all NORMAL, deadline {args.deadline:g} s; measured over {args.duration:g}"
              f" s after {args.warmup:g} s of the same load (logs: {tmp})")
        runs = {arm: run_arm(arm, capacities["gated"], capacities[arm], args, tmp, stats,
                             stats_server.url) for arm in arms}
    finally:
        stats_server.stop()
    report(runs, capacities, args)


def report(runs: dict[str, dict[str, Any]], capacities: dict[str, float],
           args: argparse.Namespace) -> None:
    rows = []
    for arm, res in runs.items():
        quiet = [res["tenants"][t] for t in QUIET]
        worst = min(quiet, key=lambda r: r["started_in_time"] / max(r["offered"], 1))
        summed = {k: sum(r[k] for r in quiet)
                  for k in ("offered", "accepted", "shed", "started_in_time", "late")}
        p99s = [r["wait_p99_s"] for r in quiet if r["wait_p99_s"] is not None]
        for name, row in (("noisy", res["tenants"]["noisy"]),
                          ("9 quiet (sum)", summed | {"wait_p99_s": max(p99s, default=None)}),
                          ("worst quiet", worst)):
            rows.append({"arm": arm, "tenant": name, **{k: row.get(k) for k in (
                "offered", "accepted", "shed", "started_in_time", "late", "wait_p99_s")},
                "goodput": f"{res['goodput_ratio']:.1%}" if name == "noisy" else "",
                "max_depth": res["max_depth"] if name == "noisy" else ""})
    print_table("fairness: one noisy tenant, nine quiet ones (NORMAL)",
                ["arm", "tenant", "offered", "accepted", "shed", "started_in_time", "late",
                 "wait_p99_s", "goodput", "max_depth"], rows)
    if "gated" in runs:
        g = runs["gated"]
        checks = [(f"every quiet tenant >= {TARGET_QUIET:.0%} started in time",
                   g["worst_quiet_started_in_time_ratio"] >= TARGET_QUIET,
                   f"worst {g['worst_quiet_started_in_time_ratio']:.1%}"),
                  (f"goodput >= {TARGET_GOODPUT:.0%}", g["goodput_ratio"] >= TARGET_GOODPUT,
                   f"{g['goodput_ratio']:.1%}")]
        print(f"  gated: levels seen {g['levels']}; shed reasons, noisy "
              f"{g['tenants']['noisy']['shed_reasons']}, quiet-1 "
              f"{g['tenants']['quiet-1']['shed_reasons']}")
        for what, ok, value in checks:
            print(f"  gated target {'met' if ok else 'MISSED'}: {what} ({value})")
    path = write_json("fairness", {"capacity_jobs_per_s": capacities, "args": vars(args),
                                   "runs": runs}, args.json)
    print(f"JSON: {path}")


if __name__ == "__main__":
    main()
