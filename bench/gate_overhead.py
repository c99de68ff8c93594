"""Submissions per second through the Sluice gate vs plain Celery `apply_async`, same run.

    python bench/gate_overhead.py [--n 5000] [--rounds 3] [--json PATH]

Five measurements on one embedded Redis, in one process, alternating rounds (the best round
of each is kept, since these machines are shared and noisy): `submit` (gate on, level
NORMAL), `apply_async` of the same task name on a plain Celery app, `submit_many` in batches
of 500, the same `apply_async` loop as its baseline, and `submit` of a task with one secret field
(sealed with Fernet before the send). Targets: submit >= 0.90x plain,
submit_many >= 5x plain.
"""

from __future__ import annotations

import argparse
from typing import Any

from _common import (
    GATE_OPEN,
    bench_env,
    print_table,
    rate,
    redis_server,
    temp_dir,
    use_env,
    write_json,
)

PAYLOAD = {"submitted_at": 0.0, "priority": "NORMAL", "sleep_s": 0.0, "tid": ""}
SECRET_PAYLOAD = PAYLOAD | {"token": "s3cret-api-token"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    tmp = temp_dir("sluice-bench-gate-")
    server = redis_server(tmp)
    use_env(bench_env(server.url, tmp, **GATE_OPEN))
    try:
        result = measure(server, args.n, args.rounds)
    finally:
        server.stop()
    rows = [{"path": k, "jobs_per_s": v} for k, v in result["rates"].items()]
    print_table("gate overhead (best of rounds)", ["path", "jobs_per_s"], rows)
    print(f"submit / plain apply_async      = {result['submit_ratio']:.2f}x (target >= 0.90)")
    print(f"submit_many / plain apply_async = {result['submit_many_ratio']:.2f}x (target >= 5)")
    print(f"submit, sealed secret / submit  = {result['sealed_over_unsealed']:.2f}x (target "
          ">= 0.80: the price of one Fernet encryption per job)")
    print("JSON:", write_json("gate_overhead", result, args.json))


def measure(server: Any, n: int, rounds: int) -> dict[str, Any]:
    from bench.tasks import plain, sluice_work  # noqa: F401  (registers bench.work)
    from producers import default_producer

    producer = default_producer()
    producer.start()
    plain_task = plain.tasks["bench.work"]
    client = server.client()
    best: dict[str, float] = {}
    paths = {
        "plain apply_async": lambda: [plain_task.apply_async(args=[PAYLOAD], queue="normal")
                                      for _ in range(n)],
        "sluice submit": lambda: [producer.submit("bench.work", PAYLOAD) for _ in range(n)],
        "sluice submit_many (500/batch)": lambda: [
            producer.submit_many("bench.work", [PAYLOAD] * 500) for _ in range(n // 500)],
        "sluice submit, one secret field sealed": lambda: [
            producer.submit("bench.secret", SECRET_PAYLOAD) for _ in range(n)],
    }
    for fn in paths.values():  # warm-up: connections, imports, first-use caches
        fn()
    for _ in range(rounds):
        for name, fn in paths.items():
            client.flushdb()
            producer.monitor.tick()
            best[name] = max(best.get(name, 0.0), rate(n, fn))
    producer.close()
    plain_rate = best["plain apply_async"]
    return {"n": n, "rounds": rounds, "rates": best,
            "submit_ratio": best["sluice submit"] / plain_rate,
            "submit_many_ratio": best["sluice submit_many (500/batch)"] / plain_rate,
            "secret_submit_ratio": best["sluice submit, one secret field sealed"] / plain_rate,
            "sealed_over_unsealed": best["sluice submit, one secret field sealed"]
            / best["sluice submit"]}


if __name__ == "__main__":
    main()
