"""`sluice db`, `schedule`, `metrics`, `doctor`, `worker`, `flower`, `demo`, `redis`, `wait`,
`secret-key`: running and checking the processes."""

from __future__ import annotations

import os
import sys
import time

import typer

from ops.cli.app import JSON, app, db_app, schedule_app
from ops.cli.output import FAILURE, USAGE, console, emit, err, fail

# -- database, schedules, metrics ------------------------------------------------------------

#: Celery from this interpreter's environment, whatever PATH says (no venv activated).
CELERY = [sys.executable, "-m", "celery"]


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply pending migrations."""
    from dlq.migrate import current_revision, upgrade

    upgrade()
    console.print(f"database at revision {current_revision()}")


@db_app.command("current")
def db_current() -> None:
    """Show the schema revision and whether it is the latest."""
    from dlq.migrate import current_revision, head_revision

    console.print(f"current {current_revision()}, head {head_revision()}")


@schedule_app.command("ls")
def schedule_ls(as_json: bool = JSON) -> None:
    """Each beat job and application schedule: when, next run, runs, sheds, last run and
    last outcome (accepted, shed or duplicate for a schedule), from what ran."""
    from schedules.definitions import read_schedules
    from schedules.status import schedule_rows
    from sluice.settings import get_settings

    emit(schedule_rows(time.time()), as_json,
         ["job", "kind", "schedule", "next_run", "runs", "sheds", "last_run", "last_outcome"],
         "schedules")
    path = get_settings().schedules_file
    if path is not None and read_schedules(path)[1]:
        err.print(f"warning: {path} has problems (beat refuses it): run `sluice schedule "
                  "check`", highlight=False, markup=False)


@schedule_app.command("run")
def schedule_run(job: str = typer.Argument(..., help="reconcile, retry-dead-letters or "
                                                     "purge-dead-letters"),
                 as_json: bool = JSON) -> None:
    """Run one beat job here and now (as beat would have it run), and print its outcome."""
    from schedules.beat import JOBS
    from sluice.app import app as celery_app

    if job not in JOBS:
        fail(f"unknown job {job!r} (one of {', '.join(JOBS)})", USAGE)
    celery_app.loader.import_default_modules()
    outcome = celery_app.tasks[JOBS[job][0]]()  # runs here, recorded like a beat run
    emit([outcome] if as_json else outcome, as_json)


@app.command("secret-key")
def secret_key() -> None:
    """Print a new key for SLUICE_SECRET_KEY (it seals the secret fields of every job). To
    rotate: SLUICE_SECRET_KEY=NEW,OLD (the first seals, all open), then drop OLD once
    `sluice doctor` finds no dead letter sealed under it."""
    from cryptography.fernet import Fernet

    console.out(Fernet.generate_key().decode(), highlight=False)


@app.command()
def metrics(port: int | None = typer.Option(None, "--port"),
            host: str = typer.Option("127.0.0.1", "--host"),
            once: bool = typer.Option(False, "--once", help="Print the metrics and exit")) -> None:
    """Serve Prometheus metrics over HTTP (or print them once)."""
    from prometheus_client import CollectorRegistry, generate_latest, start_http_server

    from ops.metrics import SluiceCollector
    from sluice.settings import get_settings

    registry = CollectorRegistry()
    registry.register(SluiceCollector())
    if once:
        console.out(generate_latest(registry).decode(), highlight=False)
        return
    port = port or get_settings().metrics_port
    start_http_server(port, addr=host, registry=registry)
    console.print(f"metrics on http://{host}:{port}/metrics")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


@app.command()
def doctor(worker: str | None = typer.Option(None, "--worker",
                                                help="Readiness of one worker (hostname)"),
           as_json: bool = JSON) -> None:
    """Check Redis, the database, migrations, config, outbox and spool sizes."""
    from ops.doctor import run_checks, worker_state

    if worker is not None:
        state = worker_state(worker)
        emit([{"worker": worker, "state": state}] if as_json else {"worker": worker,
                                                                  "state": state}, as_json)
        raise SystemExit(0 if state == "ready" else FAILURE)
    rows = run_checks()
    emit(rows, as_json, ["check", "ok", "detail"], "sluice doctor")
    raise SystemExit(0 if all(r["ok"] for r in rows) else FAILURE)


@app.command()
def worker(queues: str = typer.Option("critical,high,normal,low", "--queues", "-Q"),
           concurrency: int | None = typer.Option(None, "--concurrency", "-c"),
           hostname: str | None = typer.Option(None, "--hostname", "-n"),
           loglevel: str = typer.Option("info", "--loglevel", "-l")) -> None:
    """Run a worker: strict queue order, SIGTERM drains for SLUICE_DRAIN_SECONDS."""
    args = [*CELERY, "-A", "sluice.app", "worker", "-Q", queues, "-l", loglevel]
    if concurrency:
        args += ["-c", str(concurrency)]
    if hostname:
        args += ["-n", hostname]
    os.environ["REMAP_SIGTERM"] = "SIGQUIT"  # SIGTERM -> soft shutdown (the drain window)
    os.execv(args[0], args)


@app.command()
def flower(address: str = typer.Option("127.0.0.1", "--address"),
           port: int = typer.Option(5555, "--port", envvar="FLOWER_PORT")) -> None:
    """Run Flower, locked (`ops.flowerconfig`): basic auth (FLOWER_BASIC_AUTH=user:password)
    unless bound to 127.0.0.1, no task applying, read only unless FLOWER_READ_ONLY=false."""
    from ops.flowerconfig import bind_address
    from sluice.errors import ConfigError

    try:  # checked again inside Flower, where its config file is read too: this fails fast
        bind_address(address, bool(os.environ.get("FLOWER_BASIC_AUTH")
                                   or os.environ.get("FLOWER_AUTH")))
    except ConfigError as exc:
        fail(str(exc), USAGE)
    args = [sys.executable, "-m", "ops.flowerconfig", f"--address={address}", f"--port={port}"]
    os.execv(args[0], args)


@app.command()
def demo(duration: float = typer.Option(30.0, "--duration", min=5),
         plot: str | None = typer.Option(None, "--plot", help="Write a PNG of the run"),
         workers: int = typer.Option(2, "--workers", min=1),
         hold: bool = typer.Option(False, "--hold", help="Keep the console and Flower up "
                                   "after the summary, until Ctrl-C"),
         as_json: bool = JSON) -> None:
    """The end-to-end showcase on an embedded Redis and SQLite store; exits when done."""
    from ops.cli.demo import run_demo

    raise SystemExit(run_demo(duration=duration, plot=plot, concurrency=workers,
                              as_json=as_json, hold=hold))


# -- the local stack (`make up`) --------------------------------------------------------------

@app.command("redis")
def redis_server(directory: str | None = typer.Option(
                     None, "--dir", help="Data folder (default: SLUICE_DATA_DIR/redis)"),
                 bind: str = typer.Option("127.0.0.1", "--bind")) -> None:
    """Run the embedded Redis in the foreground on the port of SLUICE_REDIS_URL, append-only,
    in a local folder; SIGTERM or Ctrl-C stops it cleanly."""
    from pathlib import Path

    from ops.cli.stack import run_redis

    run_redis(Path(directory) if directory else None, bind)


@app.command("wait")
def wait(timeout: float = typer.Option(60.0, "--timeout", min=0)) -> None:
    """Wait until Redis answers and the database schema is at head (exit 1 on timeout)."""
    from rich.markup import escape

    from ops.cli.stack import wait_until_ready

    problem = wait_until_ready(timeout)
    if problem:
        fail(f"not ready after {timeout:g}s: {escape(problem)}")
