"""Shared scaffolding for the benchmarks: an embedded Redis, worker processes, output."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ops import processes  # noqa: E402
from ops.embedded import EmbeddedRedis  # noqa: E402
from ops.state import reset_process_state  # noqa: E402

RESULTS = ROOT / "bench" / "results"
#: seals the secret fields of `bench.secret` for this run (producer and workers share it)
SECRET_KEY = os.environ.get("SLUICE_SECRET_KEY") or Fernet.generate_key().decode()
#: Thresholds far above any benchmark's depth: the gate stays at NORMAL while nothing drains.
GATE_OPEN = {"pressure_warning": "10000000", "pressure_critical": "20000000",
             "pressure_shed": "30000000"}


def machine() -> dict[str, Any]:
    return {"python": platform.python_version(), "cpus": os.cpu_count(),
            "platform": platform.platform(), "when": time.strftime("%Y-%m-%d %H:%M:%S")}


def bench_env(redis_url: str, tmp: Path, **settings: str) -> dict[str, str]:
    """Environment for this process and its workers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    env.update({"SLUICE_REDIS_URL": redis_url, "BENCH_REDIS_URL": redis_url,
                "SLUICE_DATABASE_URL": f"sqlite:///{tmp / 'sluice.db'}",
                "SLUICE_DATA_DIR": str(tmp / "data"), "SLUICE_SPOOL_PATH": str(tmp / "spool"),
                "PYTHONPATH": str(ROOT), "REMAP_SIGTERM": "SIGQUIT", "PYTHONUNBUFFERED": "1",
                "SLUICE_SECRET_KEY": SECRET_KEY})
    env.update({f"SLUICE_{k.upper()}": v for k, v in settings.items()})
    return env


def use_env(env: dict[str, str]) -> None:
    """Apply `env` to this process and forget cached settings and connections."""
    os.environ.update({k: v for k, v in env.items()
                       if k.startswith(("SLUICE_", "BENCH_"))})
    reset_process_state()


def start_worker(app: str, env: dict[str, str], log: Path, concurrency: int = 2,
                 queues: str = "critical,high,normal,low", name: str = "bench@localhost",
                 extra: list[str] | None = None) -> subprocess.Popen[bytes]:
    return processes.celery(app, ["worker", "-Q", queues, "-c", str(concurrency), "-n", name,
                                  "-l", "warning", "--without-mingle", "--without-gossip",
                                  *(extra or [])], env, log, cwd=ROOT)


def stop(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    processes.stop(proc, timeout=timeout)


def rate(n: int, fn: Callable[[], Any]) -> float:
    """`n` divided by the seconds `fn()` took: what one measured path does per second."""
    started = time.perf_counter()
    fn()
    return n / (time.perf_counter() - started)


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise TimeoutError(f"timed out waiting for {what}")


def write_json(name: str, data: dict[str, Any], path: str | None = None) -> Path:
    out = Path(path) if path else RESULTS / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine(), **data}, indent=2, default=str))
    return out


def print_table(title: str, columns: list[str], rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*(f"{r.get(c):.3f}" if isinstance(r.get(c), float) else str(r.get(c, "-"))
                    for c in columns))
    Console(width=160).print(t)


def temp_dir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


def redis_server(tmp: Path, maxmemory: str | None = None) -> EmbeddedRedis:
    """A fresh Redis of our own (`noeviction`); `maxmemory` caps it (e.g. "32mb"): once
    full it refuses every write that would grow it (OOM), as a production Redis would."""
    extra = ("--maxmemory", maxmemory) if maxmemory else ()
    return EmbeddedRedis(tmp / "redis", extra_args=extra).start()
