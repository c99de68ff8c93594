"""A dead worker's job: how long until it starts again elsewhere. Sluice vs a tuned Celery.

    python bench/recovery.py [--kills 10] [--plain-kills 2] [--visibility 60] [--json PATH]

Each kill: a victim worker takes one long CRITICAL job, a second worker runs beside it, the
victim is SIGKILLed (main process and pool), and the time until the job's next start is
measured. Sluice: live workers restore a dead worker's messages once its liveness key has
expired (SLUICE_WORKER_HEARTBEAT_TTL 15 s, checked every 5 s). Tuned Celery (strict order,
prefetch 1, late acks) with the same visibility timeout: kombu restores the message after
the visibility timeout, checked every unacked_restore_interval x throttle (10 s x 10). A kill
not recovered within `--give-up` seconds counts as that many seconds (a lower bound).
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from pathlib import Path

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

APPS = {"sluice": ("sluice.app", ["-I", "bench.tasks"]), "tuned": ("bench.tasks:tuned", [])}


def _starts(client: object, tid: str) -> int:
    rows = client.lrange("bench:started:CRITICAL", 0, -1)  # type: ignore[attr-defined]
    return sum(1 for r in rows if r.split(b"|")[0] == tid.encode())


def one_kill(kind: str, server: object, tmp: Path, env: dict[str, str], give_up: float,
             n: int) -> float:
    from bench.tasks import tuned_app

    client = server.client()  # type: ignore[attr-defined]
    client.flushdb()
    app, extra = APPS[kind]
    victim = start_worker(app, env, tmp / f"{kind}-victim-{n}.log", concurrency=1,
                          name=f"victim{n}@bench", extra=extra)
    tid = uuid.uuid4().hex
    payload = {"submitted_at": time.time(), "priority": "CRITICAL", "sleep_s": 600.0, "tid": tid}
    if kind == "sluice":
        from producers import default_producer

        default_producer().submit("bench.work", payload, priority="CRITICAL")
    else:
        tuned = tuned_app(env["SLUICE_REDIS_URL"])
        with tuned.connection_for_write() as conn:
            tuned.send_task("bench.work", args=[payload], queue="critical", connection=conn)
    wait_until(lambda: _starts(client, tid) == 1, 60, f"{kind}: the victim running the job")
    survivor = start_worker(app, env, tmp / f"{kind}-survivor-{n}.log", concurrency=1,
                            name=f"survivor{n}@bench", extra=extra)
    try:
        time.sleep(3)  # the survivor connects and waits: the experiment's schedule
        victim.kill()  # SIGKILL the main process; then its pool (its own session)
        victim.wait(10)
        stop(victim, timeout=1)
        killed = time.monotonic()
        try:
            wait_until(lambda: _starts(client, tid) == 2, give_up, f"{kind}: restarted")
            return time.monotonic() - killed
        except TimeoutError:
            return give_up
    finally:
        stop(survivor, timeout=3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--plain-kills", type=int, default=2)
    ap.add_argument("--visibility", type=int, default=60, help="at least 30 s")
    ap.add_argument("--give-up", type=float, default=180.0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    rows, out = [], {}
    for kind, kills in (("sluice", args.kills), ("tuned", args.plain_kills)):
        tmp = temp_dir(f"sluice-bench-recovery-{kind}-")
        server = redis_server(tmp)
        limit = max(10, args.visibility - 10)  # settings: backoff + limit < visibility
        env = bench_env(server.url, tmp, visibility_timeout=str(args.visibility),
                        retry_backoff_max="5", task_time_limit=str(limit),
                        task_soft_time_limit=str(limit - 5), drain_seconds="1")
        env["BENCH_VISIBILITY_TIMEOUT"] = str(args.visibility)
        use_env(env)
        from dlq.migrate import upgrade

        upgrade()
        try:
            times = [one_kill(kind, server, tmp, env, args.give_up, n) for n in range(kills)]
        finally:
            server.stop()
        out[kind] = {"kills": kills, "restart_s": times,
                     "p50_s": statistics.median(times), "max_s": max(times)}
        rows.append({"arm": kind, "kills": kills, "p50 s": out[kind]["p50_s"],
                     "max s": out[kind]["max_s"]})
    print_table(f"kill -> restart of the held job (visibility timeout {args.visibility} s)",
                ["arm", "kills", "p50 s", "max s"], rows)
    print(f"written to {write_json('recovery', {'visibility_timeout_s': args.visibility, **out}, args.json)}")


if __name__ == "__main__":
    main()
