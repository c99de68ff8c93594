"""No-op jobs per second: a Sluice worker vs a plain Celery worker, same run.

    python bench/worker_throughput.py [--n 3000] [--rounds 2] [--json PATH]

Both are prefork with 2 processes and consume the same preloaded queue of no-op jobs
(`bench.work`, which only records its start). The Sluice worker runs our configuration
(prefetch 1, late acks, reject on worker lost, payload validation); the plain worker runs
Celery's defaults. Rate = jobs between the first and the last start / that time.
Target: Sluice >= 0.80x plain.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from _common import (
    GATE_OPEN,
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

APPS = {"sluice": ("sluice.app", ["-I", "bench.tasks"]), "plain": ("bench.tasks:plain", [])}


def run_once(kind: str, n: int, server: Any, tmp: Path, env: dict[str, str]) -> float:
    import bench.tasks  # noqa: F401  (registers bench.work)
    from producers import default_producer

    client = server.client()
    client.flushdb()
    producer = default_producer()
    producer.monitor.tick()
    payload = {"submitted_at": 0.0, "priority": "NORMAL", "sleep_s": 0.0}
    for _ in range(n // 500):
        producer.submit_many("bench.work", [payload] * 500)
    app, extra = APPS[kind]
    proc = start_worker(app, env, tmp / f"{kind}.log", concurrency=2, extra=extra)
    try:
        wait_until(lambda: client.llen("bench:started:NORMAL") >= n, 300, f"{kind} drained")
    finally:
        stop(proc)
    starts = sorted(float(x.split(b"|")[1]) for x in client.lrange("bench:started:NORMAL", 0, -1))
    return (len(starts) - 1) / (starts[-1] - starts[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    tmp = temp_dir("sluice-bench-worker-")
    server = redis_server(tmp)
    env = bench_env(server.url, tmp, **GATE_OPEN)
    use_env(env)
    from dlq.migrate import upgrade

    upgrade()
    best: dict[str, float] = {}
    try:
        for _ in range(args.rounds):
            for kind in APPS:
                best[kind] = max(best.get(kind, 0.0), run_once(kind, args.n, server, tmp, env))
    finally:
        server.stop()
    ratio = best["sluice"] / best["plain"]
    print_table("worker throughput, no-op jobs (best of rounds)", ["worker", "jobs_per_s"],
                [{"worker": k, "jobs_per_s": v} for k, v in best.items()])
    print(f"sluice / plain = {ratio:.2f}x (target >= 0.80)")
    print("JSON:", write_json("worker_throughput", {"n": args.n, "rates": best,
                                                    "ratio": ratio}, args.json))


if __name__ == "__main__":
    main()
