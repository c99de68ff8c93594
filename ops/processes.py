"""The processes we own (celery workers and beat, Flower, servers): one way to start them and
one way to stop them, for the demo, the tests and the benchmarks.

Each runs in its own session, so a stop can also reap what it forked (a prefork pool), and is
stopped by the PID we started: SIGTERM (or the given signal), a bounded wait, then SIGKILL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

__all__ = ["spawn", "celery", "stop", "reap_group"]


def spawn(argv: list[str], env: dict[str, str], log: Path,
          cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """Start `argv` in a session of its own, appending its output to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as fh:
        return subprocess.Popen(argv, env=env, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)


def celery(app: str, args: list[str], env: dict[str, str], log: Path,
           cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """`celery -A app ...` with this interpreter (the venv's Celery, whatever PATH says)."""
    return spawn([sys.executable, "-m", "celery", "-A", app, *args], env, log, cwd)


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM,
         timeout: float = 30.0) -> int | None:
    """Signal the process, wait up to `timeout`, SIGKILL it if it is still there; then
    SIGKILL whatever is left of its session (pool children). Returns its exit code."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    reap_group(proc)
    return proc.returncode


def reap_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL what remains of `proc`'s session (its own process group, so ours only)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
