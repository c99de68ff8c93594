"""Accepted means served in time: the deadline-aware gate against a well-tuned Celery.

    python bench/overload.py [--factor 5,10] [--duration S] [--deadlines HIGH=10,NORMAL=20,LOW=30]
                             [--maxmemory 32mb] [--kill-half-at S] [--json PATH] [--plot PATH]

Measures the capacity of each arm's 2-process prefork worker on 20 ms jobs (a preloaded
queue), then, for each factor, runs three arms, each on a fresh Redis with the same worker
process count, the same jobs and the same offer (a multiple of the Sluice worker's capacity):

- `gated`: `submit_many` through the Sluice gate (depth table + predicted wait against each
  job's `deadline=`), Sluice worker (strict queue order, prefetch 1, late acks);
- `tuned`: plain Celery as an expert configures it (`queue_order_strategy: priority`,
  `worker_prefetch_multiplier=1`, `task_acks_late=True`, queues consumed in the order
  critical,high,normal,low), `apply_async` with `expires=` the deadline;
- `plain`: Celery's defaults on the same four queues, `apply_async` with `expires=`.

Producers offer `factor` x capacity for `duration` seconds with DESIGN.md's mix (10%
CRITICAL, 20% HIGH, 30% NORMAL, 40% LOW); where 10% CRITICAL alone would reach capacity
(10x), CRITICAL is 5% and LOW 45%. Every arm has the same deadlines (wait before start):
the gated arm's `deadline=` and the other arms' `expires=`, so every arm drops a job not
started by its deadline. After the offer the run goes on until the queues stay empty or the
longest deadline has passed since the last submission, so every accepted job is judged.

Per arm and priority: offered, accepted, shed (refused by the gate), refused (the publish
failed: a full Redis), started in time, late (accepted, then started after its deadline or
never: a broken promise), wait p50/p95/p99 of the jobs that started (a CRITICAL job, which
has no deadline and is never dropped, that had not started by the end counts with the wait
it had so far: a lower bound). Per arm: goodput (jobs started within their deadline per
second of the overload, as a fraction of that arm's measured worker capacity), max depth,
Redis memory peak; with `--maxmemory`, the CRITICAL publishes each arm's Redis refused.
With `--kill-half-at S`, each arm's worker processes run as two workers and one is killed
(SIGKILL) S seconds in: the promises made to jobs accepted after it, and how fast the gate's
drain rate followed.
Targets for the gated arm: late <= 1% of accepted at every priority; CRITICAL accepted 100%
with p99 wait <= 1 s; goodput >= 90% of capacity.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import signal
import statistics
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

from sluice import keys

PRIORITIES = ("CRITICAL", "HIGH", "NORMAL", "LOW")
QUEUES = ("critical", "high", "normal", "low")
ARMS = ("gated", "tuned", "plain")
DESIGN_MIX = {"CRITICAL": 0.10, "HIGH": 0.20, "NORMAL": 0.30, "LOW": 0.40}
JOB_S = 0.02
WORKER_PROCESSES = 2
APPS = {"gated": ("sluice.app", ["-I", "bench.tasks"]), "tuned": ("bench.tasks:tuned", []),
        "plain": ("bench.tasks:plain", [])}
#: the product's defaults (SLUICE_MAX_WAIT_*) and the default here, scaled to a 30 s run
PRODUCT_DEADLINES = {"HIGH": 10.0, "NORMAL": 60.0, "LOW": 300.0}
DEFAULT_DEADLINES = "HIGH=10,NORMAL=20,LOW=30"
TARGET_LATE = 0.01
TARGET_CRITICAL_P99_S = 1.0
TARGET_GOODPUT = 0.90
STARTED_KEY = keys.STARTED  # the job-start counter the gate measures its drain rate from


def mix_for(factor: float) -> dict[str, float]:
    """DESIGN.md's mix, unless 10% CRITICAL alone would be all of capacity (a knife edge):
    then 5% CRITICAL, the other 5% moved to LOW."""
    if DESIGN_MIX["CRITICAL"] * factor < 1.0:
        return dict(DESIGN_MIX)
    return {"CRITICAL": 0.05, "HIGH": 0.20, "NORMAL": 0.30, "LOW": 0.45}


def parse_deadlines(text: str) -> dict[str, float]:
    deadlines = dict(PRODUCT_DEADLINES)
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        name = name.strip().upper()
        if name not in deadlines:
            raise SystemExit(f"--deadlines: {name!r} is not HIGH, NORMAL or LOW "
                             "(CRITICAL has no deadline)")
        try:
            deadlines[name] = float(value)
        except ValueError:
            raise SystemExit(f"--deadlines: {part!r} is not NAME=SECONDS") from None
        if not deadlines[name] > 0:
            raise SystemExit(f"--deadlines: {name} must be > 0 seconds")
    return deadlines


class Offer:
    """Offered / accepted / shed / refused counts and each accepted job's submit time."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.submitted: dict[str, tuple[str, float]] = {}
        self.predicted: dict[str, float] = {}  #: gated: the gate's predicted wait at submit
        self.refused_s = 0.0  #: time spent in publishes that failed
        self.first_refused_at: float | None = None
        self.lock = threading.Lock()

    def note(self, priority: str, payloads: list[dict], outcomes: list[str]) -> None:
        with self.lock:
            self.counts[f"{priority}:offered"] += len(payloads)
            for p, outcome in zip(payloads, outcomes, strict=True):
                kind = outcome.split(":")[0]
                self.counts[f"{priority}:{kind}"] += 1
                if kind != outcome:  # shed:REASON, accepted:outboxed
                    self.counts[f"{priority}:{outcome}"] += 1
                if kind == "accepted":
                    self.submitted[p["tid"]] = (priority, p["submitted_at"])
                elif kind == "refused" and self.first_refused_at is None:
                    self.first_refused_at = p["submitted_at"]


def sender(arm: str, url: str, deadlines: dict[str, float], out: Offer) -> tuple[Any, Any]:
    """(priority, payloads) -> one outcome per payload: `accepted`, `accepted:outboxed`,
    `shed:REASON` (the gate said no) or `refused` (the publish failed); and a closer."""
    from producers import Priority, Rejected, default_producer

    if arm == "gated":
        producer = default_producer()
        producer.start()

        def submit(prio: str, payloads: list[dict], until: float) -> list[str]:
            outcomes = []
            # what the gate decides on (a sampler tick may land in between: rarely)
            predicted = producer.monitor.current().wait_for(Priority[prio])
            for p, o in zip(payloads, producer.submit_many(
                    "bench.work", payloads, priority=prio, deadline=deadlines.get(prio)),
                    strict=True):
                if isinstance(o, Rejected):
                    outcomes.append("refused" if o.reason == "BROKER_UNAVAILABLE"
                                    else f"shed:{o.reason}")
                else:
                    outcomes.append("accepted:outboxed" if o.outboxed else "accepted")
                    with out.lock:
                        out.predicted[p["tid"]] = predicted
            return outcomes
        return submit, producer

    from bench.tasks import plain_app, tuned_app

    app = (tuned_app if arm == "tuned" else plain_app)(url)
    task = app.tasks["bench.work"]

    def publish(prio: str, payloads: list[dict], until: float) -> list[str]:
        outcomes = []
        for p in payloads:
            if time.monotonic() >= until:  # a slow (refused, retried) publish: stop on time
                break
            p["submitted_at"] = time.time()
            try:
                task.apply_async(args=[p], queue=prio.lower(), expires=deadlines.get(prio))
                outcomes.append("accepted")
            except Exception:  # noqa: BLE001  (OOM from a full Redis, wrapped or not)
                outcomes.append("refused")
                with out.lock:
                    out.refused_s += time.time() - p["submitted_at"]
        return outcomes
    return publish, app


def offer(send: Any, priority: str, rate: float, until: float, out: Offer) -> None:
    """Offer `rate` jobs/s until `until`; the count follows the clock, so a gate delay or a
    slow publish adds latency, not fewer offers, unless the producer falls more than a
    second behind (then what it could not send is not offered, and the shortfall shows)."""
    due, last = 0.0, time.monotonic()
    while time.monotonic() < until:
        now = time.monotonic()
        due, last = min(due + rate * (now - last), max(rate, 1.0)), now
        batch = int(due)
        if batch:
            due -= batch
            payloads = [{"submitted_at": time.time(), "priority": priority, "sleep_s": JOB_S,
                         "tid": uuid.uuid4().hex} for _ in range(batch)]
            outcomes = send(priority, payloads, until)
            out.note(priority, payloads[:len(outcomes)], outcomes)
        time.sleep(0.05)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def read_starts(stats: Any) -> dict[str, float]:
    """task id -> started_at, from the records the task body pushed."""
    starts: dict[str, float] = {}
    for prio in PRIORITIES:
        for raw in stats.lrange(f"bench:started:{prio}", 0, -1):
            tid, started_at = raw.decode().split("|")[:2]
            starts[tid] = float(started_at)
    return starts


def warm_up(send: Any, stats: Any) -> None:
    """One CRITICAL job end to end: the worker consumes before the clock starts."""
    payload = {"submitted_at": time.time(), "priority": "CRITICAL", "sleep_s": 0.0,
               "tid": "warm-up"}
    send("CRITICAL", [payload], time.monotonic() + 60)
    wait_until(lambda: stats.llen("bench:started:CRITICAL") >= 1, 120, "the worker's first job")


def run_arm(arm: str, factor: float, capacity: float, own_capacity: float, duration: float,
            deadlines: dict[str, float], maxmemory: str | None, tmp: Path,
            stats: Any, stats_url: str, kill_at: float | None = None) -> dict[str, Any]:
    """One arm on a fresh Redis: `factor` x `capacity` (the same offer for every arm), with
    goodput as a fraction of this arm's own worker capacity. `kill_at`: run the worker
    processes as two workers of one process each and SIGKILL one of them that many seconds
    into the overload (half the capacity gone)."""
    folder = tmp / f"{arm}-{factor:g}x"
    server = redis_server(folder, maxmemory)
    env = bench_env(server.url, folder, **{f"max_wait_{p.lower()}": f"{d:g}"
                                           for p, d in deadlines.items()})
    env["BENCH_STATS_URL"] = stats_url
    use_env(env)
    if arm == "gated":
        from dlq.migrate import upgrade

        upgrade()
    client = server.client()
    stats.flushdb()
    app, extra = APPS[arm]
    if kill_at is None:
        workers = [start_worker(app, env, tmp / f"{arm}-{factor:g}x.log",
                                concurrency=WORKER_PROCESSES, extra=extra)]
    else:  # the same processes, as two workers: one of them dies
        workers = [start_worker(app, env, tmp / f"{arm}-{factor:g}x-{half}.log",
                                concurrency=WORKER_PROCESSES // 2,
                                name=f"bench-{half}@localhost", extra=extra)
                   for half in ("a", "b")]
    worker = workers[0]
    killed: list[float] = []  # when one of them was killed, seconds into the overload
    mix = mix_for(factor)
    out, depths, gate = Offer(), [], []
    send, closer = sender(arm, server.url, deadlines, out)
    try:
        warm_up(send, stats)
        out.predicted.clear()
        wired = None
        if arm == "gated":  # the job-start counter that the drain rate is measured from
            try:
                wait_until(lambda: client.get(STARTED_KEY) is not None, 2, STARTED_KEY)
                wired = True
            except TimeoutError:
                wired = False
        stats.flushdb()
        t0 = time.time()
        until = time.monotonic() + duration
        threads = [threading.Thread(target=offer, args=(send, p, factor * capacity * share,
                                                        until, out), daemon=True)
                   for p, share in mix.items()]
        for t in threads:
            t.start()
        monitor = closer.monitor if arm == "gated" else None
        exited: list[float] = []  # when the worker process died, if it did

        def sample() -> int:
            if not exited and worker.poll() is not None:
                exited.append(time.time() - t0)
            pipe = client.pipeline(transaction=False)
            for q in QUEUES:
                pipe.llen(q)
            depth = sum(pipe.execute())
            depths.append(depth)
            if monitor is not None:
                snap = monitor.snapshot
                gate.append((time.time() - t0, snap.level.name, snap.drain.rate))
            return depth

        while any(t.is_alive() for t in threads):
            if kill_at is not None and not killed and time.time() - t0 >= kill_at:
                os.killpg(workers[1].pid, signal.SIGKILL)  # no warm shutdown: the worker
                # and its pool processes die at once (it runs in a session of its own)
                killed.append(time.time() - t0)
            sample()
            time.sleep(0.25)
        t_end = time.time()
        # every accepted job is judged: its queue drains, or its deadline passes
        stop_by = t_end + max(deadlines.values()) + 3.0
        empty_since = None
        while time.time() < stop_by:
            try:
                empty = sample() == 0
            except Exception:  # noqa: BLE001  (a full Redis may refuse nothing we read)
                empty = False
            empty_since = (empty_since or time.time()) if empty else None
            if empty_since and time.time() - empty_since >= 1.5:
                break
            time.sleep(0.25)
        end = time.time()
        memory_peak = int(client.info("memory")["used_memory_peak"])
        starts = read_starts(stats)
    finally:
        if arm == "gated":
            from producers import reset_default_producer

            reset_default_producer()
        else:
            closer.close()
        for w in workers:
            stop(w, timeout=3)  # the arm is over: no drain needed
        server.stop()
    result = summarize(out, starts, deadlines, t0, t0 + duration, end, own_capacity)
    if killed:
        result["kill_half"] = after_kill(out, starts, deadlines, t0, killed[0], gate)
    target = factor * capacity * duration
    offered = sum(out.counts[f"{p}:offered"] for p in PRIORITIES)
    if offered < 0.95 * target:
        print(f"  note: {arm} offered {offered} jobs, {offered / target:.0%} of the "
              f"{target:.0f} intended (the producer could not keep up on this machine)")
    result.update(max_depth=max(depths, default=0), redis_memory_peak_bytes=memory_peak,
                  capacity_jobs_per_s=round(own_capacity, 2),
                  critical_publishes_refused=out.counts["CRITICAL:refused"],
                  critical_outboxed=out.counts["CRITICAL:accepted:outboxed"],
                  first_refusal_s=None if out.first_refused_at is None
                  else round(out.first_refused_at - t0, 1),
                  refused_publish_ms_mean=round(1000 * out.refused_s / refused, 1)
                  if arm != "gated" and (refused := sum(out.counts[f"{p}:refused"]
                                                         for p in PRIORITIES))
                  else None,
                  observed_s=round(end - t0, 1), mix=mix,
                  worker_exited_s=round(exited[0], 1) if exited else None)
    if arm == "gated":
        rates = [r for _, _, r in gate if r is not None]
        result["gate"] = {
            "start_counter_wired": wired,
            "drain_rate_p50": round(statistics.median(rates), 1) if rates else None,
            "levels": dict(Counter(level for _, level, _ in gate)),
            "actual_over_predicted_wait_p50": prediction_error(out, starts),
            "drain_rate_series": [[round(t, 2), None if r is None else round(r, 1)]
                                  for t, _, r in gate],
            "shed_reasons": {p: {k.split(":", 2)[2]: v for k, v in out.counts.items()
                                 if k.startswith(f"{p}:shed:")} for p in PRIORITIES}}
    result["_series"] = series(out, starts, t0)
    return result


def after_kill(out: Offer, starts: dict[str, float], deadlines: dict[str, float], t0: float,
               killed_s: float, gate: list[tuple[float, str, float | None]]) -> dict[str, Any]:
    """Half the workers killed `killed_s` into the overload: per priority, the promises made
    to the jobs accepted after it; for the gated arm, its drain rate before (median of the
    5 s before) and how long it took to come down to 62.5% of it (half, plus 25%)."""
    late: dict[str, list[int]] = {p: [0, 0] for p in PRIORITIES}  # [late, accepted]
    for tid, (prio, submitted_at) in out.submitted.items():
        if submitted_at - t0 < killed_s:
            continue
        deadline, started = deadlines.get(prio), starts.get(tid)
        late[prio][1] += 1
        late[prio][0] += started is None or (deadline is not None
                                             and started - submitted_at > deadline)
    result: dict[str, Any] = {"at_s": round(killed_s, 1),
                              "late_after": {p: {"late": n, "accepted": a}
                                             for p, (n, a) in late.items()}}
    before = [r for t, _, r in gate if killed_s - 5 <= t < killed_s and r is not None]
    if before:
        rate = statistics.median(before)
        followed = next((t - killed_s for t, _, r in gate
                         if t >= killed_s and r is not None and r <= 0.625 * rate), None)
        result |= {"drain_rate_before": round(rate, 1),
                   "drain_rate_followed_in_s": None if followed is None else round(followed, 2)}
    return result


def summarize(out: Offer, starts: dict[str, float], deadlines: dict[str, float],
              t0: float, window_end: float, end: float, capacity: float) -> dict[str, Any]:
    per: dict[str, Any] = {}
    in_time_in_window = 0
    for prio in PRIORITIES:
        deadline = deadlines.get(prio)
        waits: list[float] = []
        in_time = started_late = never = 0
        for tid, (p, submitted_at) in out.submitted.items():
            if p != prio:
                continue
            started_at = starts.get(tid)
            if started_at is None:
                never += 1
                if deadline is None:  # CRITICAL is never dropped: it was still waiting
                    waits.append(end - submitted_at)
                continue
            wait = started_at - submitted_at
            waits.append(wait)
            if deadline is None or wait <= deadline:
                in_time += 1
                in_time_in_window += t0 <= started_at <= window_end
            else:
                started_late += 1
        accepted = out.counts[f"{prio}:accepted"]
        per[prio] = {"offered": out.counts[f"{prio}:offered"], "accepted": accepted,
                     "shed": out.counts[f"{prio}:shed"],
                     "refused": out.counts[f"{prio}:refused"],
                     "started_in_time": in_time, "late": started_late + never,
                     "late_started": started_late, "never_started": never,
                     "wait_p50_s": _round(percentile(waits, 0.50)),
                     "wait_p95_s": _round(percentile(waits, 0.95)),
                     "wait_p99_s": _round(percentile(waits, 0.99))}
    per["goodput_ratio"] = round(in_time_in_window / (window_end - t0) / capacity, 3)
    return per


def prediction_error(out: Offer, starts: dict[str, float]) -> dict[str, float | None]:
    """Per priority, the median of (actual wait / the gate's predicted wait) over the jobs
    that started and were predicted to wait at least 1 s: 1.0 is a perfect prediction."""
    ratios: dict[str, list[float]] = {p: [] for p in PRIORITIES if p != "CRITICAL"}
    for tid, predicted in out.predicted.items():
        prio, submitted_at = out.submitted.get(tid, ("", 0.0))
        if prio in ratios and predicted >= 1.0 and tid in starts:
            ratios[prio].append((starts[tid] - submitted_at) / predicted)
    return {p: _round(percentile(r, 0.5)) for p, r in ratios.items()}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def series(out: Offer, starts: dict[str, float], t0: float) -> dict[str, Any]:
    """For the plot only (never written to JSON): per priority, (submitted, wait) of the
    jobs that started and the submit times of those that never did."""
    data: dict[str, Any] = {p: {"started": [], "never": []} for p in PRIORITIES}
    for tid, (prio, submitted_at) in out.submitted.items():
        started_at = starts.get(tid)
        if started_at is None:
            data[prio]["never"].append(submitted_at - t0)
        else:
            data[prio]["started"].append((submitted_at - t0, started_at - submitted_at))
    return data


def measure_capacity(arm: str, tmp: Path, stats: Any, stats_url: str, n: int = 400) -> float:
    """Jobs started per second by `arm`'s worker draining a preloaded queue of 20 ms jobs."""
    folder = tmp / f"capacity-{arm}"
    server = redis_server(folder)
    env = bench_env(server.url, folder)
    env["BENCH_STATS_URL"] = stats_url
    use_env(env)
    stats.flushdb()
    payloads = [{"submitted_at": 0.0, "priority": "NORMAL", "sleep_s": JOB_S, "tid": str(i)}
                for i in range(n)]
    if arm == "gated":
        import bench.tasks  # noqa: F401
        from dlq.migrate import upgrade
        from producers import default_producer, reset_default_producer

        upgrade()
        default_producer().submit_many("bench.work", payloads, deadline=3600)
        reset_default_producer()
    else:
        from bench.tasks import plain_app, tuned_app

        app = (tuned_app if arm == "tuned" else plain_app)(server.url)
        for p in payloads:
            app.tasks["bench.work"].apply_async(args=[p], queue="normal")
        app.close()
    app_name, extra = APPS[arm]
    worker = start_worker(app_name, env, tmp / f"capacity-{arm}.log",
                          concurrency=WORKER_PROCESSES, extra=extra)
    try:
        wait_until(lambda: stats.llen("bench:started:NORMAL") >= n, 180, f"{arm} capacity run")
        starts = sorted(float(x.split(b"|")[1])
                        for x in stats.lrange("bench:started:NORMAL", 0, -1))
    finally:
        stop(worker, timeout=3)  # the arm is over: no drain needed
        server.stop()
    return (len(starts) - 1) / (starts[-1] - starts[0])


COLORS = {"CRITICAL": "tab:red", "HIGH": "tab:orange", "NORMAL": "tab:blue", "LOW": "tab:gray"}


def plot(runs: dict[str, dict[str, Any]], deadlines: dict[str, float], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = random.Random(17)
    factors = list(runs)
    arms = [a for a in ARMS if a in runs[factors[0]]]
    fig, axes = plt.subplots(len(factors), len(arms), figsize=(5 * len(arms),
                                                                 3.6 * len(factors)),
                             squeeze=False, sharey=True)
    for row, factor in enumerate(factors):
        for col, arm in enumerate(arms):
            ax, res = axes[row][col], runs[factor][arm]
            for prio in PRIORITIES:
                pts = res["_series"][prio]["started"]
                if len(pts) > 2500:
                    pts = rng.sample(pts, 2500)
                ax.plot([p[0] for p in pts], [max(p[1], 1e-3) for p in pts], ".",
                        color=COLORS[prio], markersize=2, alpha=0.6, label=prio)
                never = res["_series"][prio]["never"]
                if len(never) > 1000:
                    never = rng.sample(never, 1000)
                if never and prio in deadlines:
                    ax.plot(never, [deadlines[prio]] * len(never), "x", color=COLORS[prio],
                            markersize=3, alpha=0.4)
                if prio in deadlines:
                    ax.axhline(deadlines[prio], color=COLORS[prio], linestyle="--",
                               linewidth=0.8)
            late = sum(res[p]["late"] for p in PRIORITIES)
            acc = sum(res[p]["accepted"] for p in PRIORITIES)
            ax.set_title(f"{arm} at {factor}x: goodput {res['goodput_ratio']:.0%}, "
                         f"late {late / max(acc, 1):.0%} of accepted", fontsize=9)
            ax.set_yscale("symlog", linthresh=0.1)
            ax.set_xlabel("submitted at, s since the overload began")
            if col == 0:
                ax.set_ylabel("wait before start, s")
    axes[0][0].legend(fontsize=7, markerscale=4, loc="upper left")
    fig.suptitle("Wait before start per priority (dashed: deadline; x: accepted, never "
                 "started)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def targets(res: dict[str, Any]) -> list[tuple[str, bool, str]]:
    checks = []
    for prio in PRIORITIES:
        acc, late = res[prio]["accepted"], res[prio]["late"]
        share = late / acc if acc else 0.0
        checks.append((f"{prio} broken promises <= 1% of accepted", share <= TARGET_LATE,
                       f"{late}/{acc} = {share:.1%}"))
    c = res["CRITICAL"]
    checks.append(("CRITICAL accepted 100%", c["accepted"] == c["offered"],
                   f"{c['accepted']}/{c['offered']}"))
    p99 = c["wait_p99_s"]
    checks.append(("CRITICAL p99 wait <= 1 s", p99 is not None and p99 <= TARGET_CRITICAL_P99_S,
                   f"{p99}s"))
    checks.append(("goodput >= 90% of capacity", res["goodput_ratio"] >= TARGET_GOODPUT,
                   f"{res['goodput_ratio']:.1%}"))
    return checks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--factor", default="5,10", help="overload factors, comma-separated")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds of overload per arm")
    ap.add_argument("--deadlines", default=DEFAULT_DEADLINES,
                    help="max wait before start per priority, the same for every arm "
                         f"(default {DEFAULT_DEADLINES}, scaled to a short run; the product's "
                         "defaults are HIGH=10,NORMAL=60,LOW=300)")
    ap.add_argument("--maxmemory", default=None, help="cap each arm's Redis (e.g. 32mb)")
    ap.add_argument("--arms", default=",".join(ARMS), help="a subset of gated,tuned,plain")
    ap.add_argument("--kill-half-at", type=float, default=None, metavar="S",
                    help="run each arm's worker processes as two workers and SIGKILL one of "
                         "them S seconds into the overload")
    ap.add_argument("--json", default=None, help="default bench/results/overload.json")
    ap.add_argument("--plot", default=None)
    args = ap.parse_args()
    factors = [float(f) for f in args.factor.split(",") if f.strip()]
    arms = [a for a in args.arms.split(",") if a]
    if not factors or any(f <= 0 for f in factors) or not set(arms) <= set(ARMS):
        ap.error("--factor takes positive numbers, --arms a subset of gated,tuned,plain")
    if not 0 < args.duration <= 3600:
        ap.error("--duration must be in (0, 3600] seconds")
    if args.kill_half_at is not None and not 0 < args.kill_half_at < args.duration:
        ap.error("--kill-half-at must be within the overload: (0, --duration) seconds")
    deadlines = parse_deadlines(args.deadlines)
    logging.getLogger("sluice.pressure").setLevel(logging.ERROR)  # the gate summary says it

    tmp = temp_dir("sluice-bench-overload-")
    stats_server = redis_server(tmp / "stats")  # the benchmark's own records, never capped
    stats = stats_server.client()
    try:
        capacities = {arm: measure_capacity(arm, tmp, stats, stats_server.url)
                      for arm in ARMS if arm == "gated" or arm in arms}
        capacity = capacities["gated"]  # the offer is a multiple of the Sluice worker's
        print(f"capacity ({WORKER_PROCESSES} prefork processes, {JOB_S * 1000:.0f} ms jobs, "
              "400 preloaded): " + ", ".join(f"{a} {c:.1f}" for a, c in capacities.items())
              + " jobs/s; the offer is a multiple of the gated (Sluice) worker's, goodput a "
              f"fraction of each arm's own (worker logs: {tmp})")
        print("deadlines (wait before start; gated deadline= and tuned/plain expires=): "
              + ", ".join(f"{p} {d:g} s" for p, d in deadlines.items()) + ", CRITICAL none"
              + (f"; Redis capped at {args.maxmemory} (noeviction)" if args.maxmemory else ""))
        runs: dict[str, dict[str, Any]] = {}
        for factor in factors:
            key = f"{factor:g}"
            mix = mix_for(factor)
            crit_load = mix["CRITICAL"] * factor
            print(f"\n{key}x: mix " + ", ".join(f"{p} {s:.0%}" for p, s in mix.items())
                  + f"; CRITICAL alone is {crit_load:.0%} of capacity")
            if crit_load >= 1.0:
                print(f"  CRITICAL alone is {crit_load:.0%} of capacity: nothing may shed it, "
                      "so no arm can keep CRITICAL waits bounded; the CRITICAL targets "
                      "cannot be met at this mix")
            runs[key] = {}
            for arm in arms:
                t = time.monotonic()
                runs[key][arm] = run_arm(arm, factor, capacity, capacities[arm],
                                         args.duration, deadlines, args.maxmemory, tmp,
                                         stats, stats_server.url, args.kill_half_at)
                print(f"  {arm}: done in {time.monotonic() - t:.0f}s", flush=True)
    finally:
        stats_server.stop()

    report(runs, arms, capacity, capacities, args, deadlines)


def report(runs: dict[str, dict[str, Any]], arms: list[str], capacity: float,
           capacities: dict[str, float], args: argparse.Namespace,
           deadlines: dict[str, float]) -> None:
    columns = ["factor", "arm", "priority", "offered", "accepted", "shed", "started_in_time",
               "late", "late_%", "wait_p50_s", "wait_p95_s", "wait_p99_s"]
    if args.maxmemory:
        columns.insert(6, "refused")
    rows = []
    for factor, per_arm in runs.items():
        for arm in arms:
            for prio in PRIORITIES:
                r = per_arm[arm][prio]
                share = r["late"] / r["accepted"] if r["accepted"] else 0.0
                rows.append({"factor": f"{factor}x", "arm": arm, "priority": prio, **r,
                             "late_%": f"{share:.1%}"})
    print_table(f"overload, {args.duration:g}s per arm, capacity {capacity:.1f} jobs/s",
                columns, rows)
    for factor, per_arm in runs.items():
        for arm in arms:
            r = per_arm[arm]
            line = (f"{factor}x {arm}: goodput {r['goodput_ratio']:.1%} of its capacity "
                    f"({r['goodput_ratio'] * r['capacity_jobs_per_s']:.1f} jobs/s), max depth "
                    f"{r['max_depth']}, Redis memory peak "
                    f"{r['redis_memory_peak_bytes'] / 2**20:.1f} MiB")
            if args.maxmemory:
                line += (f", CRITICAL publishes refused {r['critical_publishes_refused']}"
                         f" (outboxed {r['critical_outboxed']})")
                if r["first_refusal_s"] is not None:
                    line += f", first refusal {r['first_refusal_s']} s into the overload"
                if r["refused_publish_ms_mean"] is not None:
                    line += f", a refused publish took {r['refused_publish_ms_mean']} ms"
            if r["worker_exited_s"] is not None:
                line += (f", WORKER EXITED {r['worker_exited_s']} s into the overload "
                         "(its log is in the run's temp folder)")
            if "kill_half" in r:
                k = r["kill_half"]
                line += (f"; half the workers killed at {k['at_s']} s: accepted after it, late "
                         + ", ".join(f"{p} {v['late']}/{v['accepted']}"
                                     for p, v in k["late_after"].items()))
                if "drain_rate_before" in k:
                    line += (f"; drain rate {k['drain_rate_before']} jobs/s before, down to "
                             f"62.5% of it {k['drain_rate_followed_in_s']} s after the kill")
            if arm == "gated":
                g = r["gate"]
                line += (f"; gate: drain rate p50 {g['drain_rate_p50']} jobs/s, levels "
                         f"{g['levels']}, shed {g['shed_reasons']}, actual/predicted wait "
                         f"p50 {g['actual_over_predicted_wait_p50']}")
            print(line)
    wired = {f: runs[f]["gated"]["gate"]["start_counter_wired"] for f in runs
             if "gated" in runs[f]}
    if wired and not all(wired.values()):
        print(f"\nWARNING: {STARTED_KEY} stayed empty while the gated worker ran: the "
              "job-start counter is not wired into the worker, so the gate has no drain "
              "rate, predicts no wait and admits on the depth table alone.")
    met_all = True
    if "gated" in arms:
        print("\ntargets (gated arm):")
        for factor in runs:
            for name, ok, value in targets(runs[factor]["gated"]):
                met_all &= ok
                print(f"  {factor}x  {'MET   ' if ok else 'MISSED'}  {name}: {value}")
    for factor, per_arm in runs.items():
        for arm in ("tuned", "plain"):
            if arm in per_arm:
                r = per_arm[arm]
                late = sum(r[p]["late"] for p in PRIORITIES)
                acc = sum(r[p]["accepted"] for p in PRIORITIES)
                print(f"  {factor}x  {arm}: broken promises {late}/{acc} = "
                      f"{late / max(acc, 1):.1%} of accepted, CRITICAL p99 "
                      f"{r['CRITICAL']['wait_p99_s']}s, goodput {r['goodput_ratio']:.1%}")
    if args.plot:
        plot(runs, deadlines, args.plot)
        print("plot:", args.plot)
    for per_arm in runs.values():
        for r in per_arm.values():
            r.pop("_series", None)
    results = {"capacity_jobs_per_s": round(capacity, 2),
               "capacity_by_arm": {a: round(c, 2) for a, c in capacities.items()},
               "duration_s": args.duration,
               "deadlines_s": deadlines, "maxmemory": args.maxmemory,
               "kill_half_at_s": args.kill_half_at,
               "worker_processes": WORKER_PROCESSES, "job_s": JOB_S,
               "gated_targets_met": met_all if "gated" in arms else None, "runs": runs}
    print("JSON:", write_json("overload", results, args.json))


if __name__ == "__main__":
    main()
