"""Dead-letter store throughput on SQLite and PostgreSQL: records/s (single, batched) and
replays/s (through the gate, into Redis).

    python bench/dlq.py [--n 2000] [--json PATH]

Target: >= 1,000 records/s batched on PostgreSQL.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from _common import GATE_OPEN, bench_env, print_table, redis_server, temp_dir, use_env, write_json


def records(n: int, prefix: str) -> list[Any]:
    from sluice.records import DeadLetterRecord

    now = time.time()
    return [DeadLetterRecord(task_id=f"{prefix}-{i}", task_name="demo.flaky", queue="normal",
                             priority="NORMAL", payload={"fail_times": 0}, exc_type="Boom",
                             exc_message="boom", traceback="Traceback ...", attempts=3,
                             first_failed_at=now, last_failed_at=now) for i in range(n)]


def measure(url: str, n: int) -> dict[str, float]:
    from sqlalchemy import create_engine

    from dlq.migrate import upgrade
    from dlq.replay import replay_many
    from dlq.store import DeadLetterStore
    from producers import default_producer

    eng = create_engine(url)
    upgrade(eng)
    store = DeadLetterStore(eng)
    single = records(min(n, 500), "single")
    started = time.perf_counter()
    for rec in single:
        store.record(rec)
    single_rate = len(single) / (time.perf_counter() - started)
    batch = records(n, "batch")
    started = time.perf_counter()
    for i in range(0, n, 500):
        store.record_many(batch[i:i + 500])
    batch_rate = n / (time.perf_counter() - started)
    ids = store.ids()[: min(n, 1000)]
    started = time.perf_counter()
    counts = replay_many(store, default_producer(), ids)
    replay_rate = counts["replayed"] / (time.perf_counter() - started)
    eng.dispose()
    return {"records_per_s_single": single_rate, "records_per_s_batched": batch_rate,
            "replays_per_s": replay_rate}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from tests.services import PostgresServer

    tmp = temp_dir("sluice-bench-dlq-")
    server = redis_server(tmp)
    use_env(bench_env(server.url, tmp, **GATE_OPEN))
    pg = PostgresServer().start()
    try:
        pg.execute("CREATE DATABASE bench")
        results = {"sqlite": measure(f"sqlite:///{tmp / 'bench.db'}", args.n),
                   "postgresql": measure(pg.url("bench"), args.n)}
    finally:
        pg.remove()
        server.stop()
    rows = [{"store": k, **v} for k, v in results.items()]
    print_table("dead-letter store", ["store", "records_per_s_single",
                                      "records_per_s_batched", "replays_per_s"], rows)
    ok = results["postgresql"]["records_per_s_batched"] >= 1000
    print(f"PostgreSQL batched records/s >= 1,000: {'yes' if ok else 'NO'}")
    print("JSON:", write_json("dlq", {"n": args.n, "results": results}, args.json))


if __name__ == "__main__":
    main()
