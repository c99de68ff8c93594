"""Submissions over HTTP (`sluice server`) beside in-process `submit`, in the same run.

    python bench/http.py [--n 2000] [--rounds 3] [--json PATH]

One embedded Redis, one `sluice server` process (uvicorn, one worker process), one
keep-alive HTTP client (httpx) in this process. Measured, best of rounds: in-process
`submit` of `bench.work`; `POST /v1/jobs/bench.work` accepted (202); and the same POST shed
(429: a kill switch on NORMAL, decided in memory by the gate with no Redis round trip).
Target: a shed response costs less than an accepted one (more shed responses per second).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

# this script is named like the standard library's `http`, which httpx imports: take its own
# folder off the path before anything imports it
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from bench._common import (  # noqa: E402
    GATE_OPEN,
    ROOT,
    bench_env,
    print_table,
    rate,
    redis_server,
    stop,
    temp_dir,
    use_env,
    wait_until,
    write_json,
)
from ops import processes  # noqa: E402
from ops.embedded import free_port  # noqa: E402

TOKEN = "bench-" + "t" * 26
PAYLOAD = {"submitted_at": 0.0, "priority": "NORMAL", "sleep_s": 0.0, "tid": ""}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.n < 1 or args.rounds < 1:
        ap.error("--n and --rounds must be >= 1")
    tmp = temp_dir("sluice-bench-http-")
    server = redis_server(tmp)
    env = bench_env(server.url, tmp, **GATE_OPEN)
    port = free_port()
    env.update(SLUICE_API_TOKENS=json.dumps({TOKEN: {"role": "submit"}}),
               SLUICE_SERVER_PORT=str(port), SLUICE_TASK_MODULES='["bench.tasks"]')
    use_env(env)
    from dlq.migrate import upgrade

    upgrade()
    http = processes.spawn([sys.executable, "-c", "from ops.cli import main; main()", "server",
                            "--no-access-log"], env | {"PYTHONPATH": str(ROOT)},
                           tmp / "server.log")
    try:
        result = measure(server, port, args.n, args.rounds)
    finally:
        stop(http, timeout=10)
        server.stop()
    rows = [{"path": k, "per_s": v} for k, v in result["rates"].items()]
    print_table("submissions per second (best of rounds)", ["path", "per_s"], rows)
    print(f"HTTP accepted / in-process submit = {result['http_over_inprocess']:.2f}x")
    print(f"HTTP shed / HTTP accepted         = {result['shed_over_accepted']:.2f}x "
          "(target > 1: a shed response costs less than an accepted one)")
    print("JSON:", write_json("http", result, args.json))


def measure(server: Any, port: int, n: int, rounds: int) -> dict[str, Any]:
    import httpx

    import bench.tasks  # noqa: F401  (registers bench.work)
    from producers import default_producer
    from producers.killswitch import turn_off, turn_on

    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: _answers(f"{base}/health"), 60, "sluice server")
    producer = default_producer()
    producer.start()
    client = server.client()
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=base, headers=headers, timeout=30) as web:
        def post(expected: int) -> None:
            for _ in range(n):
                got = web.post("/v1/jobs/bench.work", json=PAYLOAD)
                if got.status_code != expected:
                    raise SystemExit(f"expected {expected}, got {got.status_code}: {got.text}")

        def kill_switch(on: bool) -> None:
            """NORMAL switched off (on) or back (off), once the server's gate sees it."""
            (turn_on(client, "priority:NORMAL", "bench") if on
             else turn_off(client, "priority:NORMAL"))
            wait_until(lambda: web.post("/v1/jobs/bench.work", json=PAYLOAD).status_code
                       == (429 if on else 202), 10, "the server's gate sees the switch")
            producer.monitor.tick()  # and this process's gate too

        paths = {"in-process submit": lambda: [producer.submit("bench.work", PAYLOAD)
                                               for _ in range(n)],
                 "HTTP POST, accepted (202)": lambda: post(202),
                 "HTTP POST, shed (429)": lambda: post(429)}
        best: dict[str, float] = {}
        for round_ in range(rounds + 1):  # the first round warms up and is not counted
            for name, fn in paths.items():
                client.delete("normal")
                shedding = "429" in name
                if shedding:
                    kill_switch(True)
                try:
                    measured = rate(n, fn)
                finally:
                    if shedding:
                        kill_switch(False)
                if round_:
                    best[name] = max(best.get(name, 0.0), measured)
    producer.close()
    return {"n": n, "rounds": rounds, "rates": best,
            "http_over_inprocess": best["HTTP POST, accepted (202)"]
            / best["in-process submit"],
            "shed_over_accepted": best["HTTP POST, shed (429)"]
            / best["HTTP POST, accepted (202)"]}


def _answers(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


if __name__ == "__main__":
    main()
