"""`sluice ...`: submit, inspect and operate. Exit codes: 0 ok, 1 failure, 2 usage, 3 rejected."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import re
import time
from typing import Any, Optional

import typer

from sluice import keys
from sluice.cli.output import FAILURE, REJECTED, USAGE, console, emit, err, fail
from sluice.errors import (ConfigError, InvalidOption, InvalidPayload, NotFound,
                           PendingMigrations, Rejected, ReplayRefused, SluiceError,
                           UnknownPriority, UnknownTask)

app = typer.Typer(help="Sluice: a Celery job queue with priority shedding.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
killswitch_app = typer.Typer(help="Switch a priority or a task off for every producer.",
                             no_args_is_help=True)
dlq_app = typer.Typer(help="Inspect, replay and discard dead letters.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
schedule_app = typer.Typer(help="The celery beat jobs.", no_args_is_help=True)
app.add_typer(killswitch_app, name="killswitch")
app.add_typer(dlq_app, name="dlq")
app.add_typer(db_app, name="db")
app.add_typer(schedule_app, name="schedule")

JSON = typer.Option(False, "--json", help="Print JSON for scripts.")


def parse_duration(text: str) -> dt.timedelta:
    """`7d`, `12h`, `30m`, `45s` (or plain seconds) -> timedelta; usage error otherwise."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if not match:
        fail(f"cannot read duration {text!r} (examples: 7d, 12h, 30m, 45s)", USAGE)
    unit = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[match.group(2)]
    seconds = float(match.group(1)) * unit
    if seconds > MAX_AGE_S:
        fail(f"duration {text!r} is too long (at most {MAX_AGE_S // 86400:g}d)", USAGE)
    return dt.timedelta(seconds=seconds)


#: the longest age a filter or purge takes: 100 years (a datetime cannot go back much further)
MAX_AGE_S = 100 * 365 * 86400.0


def _store() -> Any:
    from dlq.migrate import check_schema
    from dlq.store import DeadLetterStore

    check_schema()
    return DeadLetterStore()


# -- tasks, submit, pressure ---------------------------------------------------------------

@app.command()
def tasks(as_json: bool = JSON) -> None:
    """List the registered tasks with their default priority and payload schema."""
    from sluice.app import app as celery_app

    celery_app.loader.import_default_modules()
    rows = [{"name": name, "priority": t.sluice_priority.name, "queue": t.sluice_priority.queue,
             "schema": t.payload_model.model_json_schema()}
            for name, t in sorted(celery_app.tasks.items())
            if getattr(t, "payload_model", None) is not None]
    if as_json:
        emit(rows, True)
        return
    for row in rows:
        row["fields"] = ", ".join(row["schema"].get("properties", {}))
    emit(rows, False, ["name", "priority", "queue", "fields"], "tasks")


@app.command()
def submit(task: str = typer.Argument(..., help="Task name, e.g. email.send"),
           payload: str = typer.Option("{}", "--payload", "-p", help="JSON object"),
           priority: Optional[str] = typer.Option(None, "--priority", "-P"),
           key: Optional[str] = typer.Option(None, "--key", help="Idempotency key"),
           countdown: Optional[float] = typer.Option(None, "--countdown", min=0),
           deadline: Optional[float] = typer.Option(
               None, "--deadline", help="Seconds it may wait before it starts"),
           as_json: bool = JSON) -> None:
    """Submit one job through the gate (exit 3 when the gate rejects it)."""
    from producers import default_producer

    try:
        data = json.loads(payload)
    except json.JSONDecodeError as exc:
        fail(f"--payload is not valid JSON: {exc}", USAGE)
    producer = default_producer()
    try:
        receipt = producer.submit(task, data, priority=priority, idempotency_key=key,
                                  countdown=countdown, deadline=deadline)
    finally:
        producer.close()
    row = {"task_id": receipt.task_id, "task": task, "queue": receipt.queue,
           "priority": receipt.priority.name, "level": receipt.level.name,
           "delayed_ms": receipt.delayed_ms, "duplicate": receipt.duplicate,
           "outboxed": receipt.outboxed}
    emit([row] if as_json else row, as_json)


def _pressure_rows() -> dict[str, Any]:
    from producers.deadline import predicted_wait
    from producers.monitor import PressureMonitor
    from producers.pressure import Thresholds
    from sluice.connections import redis_client
    from sluice.priorities import Priority
    from sluice.settings import get_settings

    s = get_settings()
    monitor = PressureMonitor(redis_client(), Thresholds.from_settings(s))
    snap = monitor.tick()
    shared = {k.decode(): v.decode() for k, v in
              redis_client().hgetall(keys.PRESSURE_STATE).items()}  # producers' drain rate
    rate = float(shared.get("drain_rate", -1)) if snap.drain.rate is None else snap.drain.rate
    rate_or_none = rate if rate >= 0 else None
    return {"level": snap.level.name, "depth": snap.depth, "depths": snap.depths,
            "oldest_age_s": {q: round(a, 3) for q, a in snap.oldest.items()},
            "drain_rate": rate_or_none,
            "predicted_wait_s": {p.name: round(predicted_wait(snap.depths, p, rate_or_none), 3)
                                 for p in Priority},
            "thresholds": {"warning": s.pressure_warning, "critical": s.pressure_critical,
                           "shed": s.pressure_shed}, "killswitches": snap.killswitches}


@app.command()
def pressure(watch: bool = typer.Option(False, "--watch", help="Live view until Ctrl-C"),
             interval: float = typer.Option(0.5, "--interval", min=0.05),
             count: int = typer.Option(0, "--count", help="Stop a --watch after N refreshes"),
             as_json: bool = JSON) -> None:
    """Queue depth per queue, the pressure level and the thresholds."""
    if not watch:
        data = _pressure_rows()
        if as_json:
            emit(data, True)
        else:
            console.print(_pressure_table(data))
        return
    from rich.live import Live

    shown = 0
    with Live(_pressure_table(_pressure_rows()), console=console, auto_refresh=False) as live:
        try:
            while not count or shown < count:
                time.sleep(interval)
                live.update(_pressure_table(_pressure_rows()), refresh=True)
                shown += 1
        except KeyboardInterrupt:
            pass


def _pressure_table(data: dict[str, Any]) -> Any:
    from sluice.cli.output import table

    waits = data["predicted_wait_s"]
    rows = [{"queue": q, "depth": n, "oldest_age_s": data["oldest_age_s"].get(q, 0),
             "predicted_wait_s": waits.get(q.upper())} for q, n in data["depths"].items()]
    rows.append({"queue": "total", "depth": data["depth"]})
    t, rate = data["thresholds"], data["drain_rate"]
    title = (f"level {data['level']}  drain {'?' if rate is None else f'{rate:.1f}'} jobs/s  "
             f"(warning {t['warning']}, critical {t['critical']}, shed {t['shed']})")
    return table(rows, ["queue", "depth", "oldest_age_s", "predicted_wait_s"], title)


# -- kill switches ---------------------------------------------------------------------------

@killswitch_app.command("on")
def killswitch_on(target: str = typer.Argument(..., help="priority:LOW or task:email.send"),
                  reason: str = typer.Option("switched off", "--reason", "-r")) -> None:
    """Refuse new submissions of a priority or task (Rejected KILL_SWITCH)."""
    from producers import killswitch
    from sluice.connections import redis_client

    try:
        key = killswitch.turn_on(redis_client(), target, reason)
    except ValueError as exc:
        fail(str(exc), USAGE)
    console.print(f"kill switch on: {key} ({reason})")


@killswitch_app.command("off")
def killswitch_off(target: str) -> None:
    """Lift a kill switch."""
    from producers import killswitch
    from sluice.connections import redis_client

    try:
        was_on = killswitch.turn_off(redis_client(), target)
    except ValueError as exc:
        fail(str(exc), USAGE)
    console.print(f"kill switch off: {target}" if was_on else f"no kill switch on {target}")


@killswitch_app.command("ls")
def killswitch_ls(as_json: bool = JSON) -> None:
    """List the kill switches that are on."""
    from producers import killswitch
    from sluice.connections import redis_client

    rows = [{"target": k, "reason": v}
            for k, v in sorted(killswitch.list_switches(redis_client()).items())]
    emit(rows, as_json, ["target", "reason"], "kill switches")


# -- dead letters ----------------------------------------------------------------------------

def _filters(task: str | None, queue: str | None, priority: str | None, status: str | None,
             since: str | None, until: str | None) -> Any:
    from dlq.models import Status
    from dlq.store import Filters
    from sluice.priorities import Priority

    if status is not None and status not in {s.value for s in Status}:
        fail(f"--status must be one of {', '.join(s.value for s in Status)} (got {status!r})",
             USAGE)
    if priority is not None:
        try:
            priority = Priority.parse(priority).name
        except ValueError as exc:
            fail(f"--priority: {exc}", USAGE)
    now = dt.datetime.now(dt.timezone.utc)
    return Filters(task, queue, priority, status,
                   now - parse_duration(since) if since else None,
                   now - parse_duration(until) if until else None)


FILTER_HELP = "Age like 1h or 7d"
DLQ_COLUMNS = ["id", "task_id", "task_name", "queue", "priority", "status", "reason",
               "attempts", "last_failed_at"]


@dlq_app.command("ls")
def dlq_ls(task: Optional[str] = typer.Option(None, "--task"),
           queue: Optional[str] = typer.Option(None, "--queue"),
           priority: Optional[str] = typer.Option(None, "--priority"),
           status: Optional[str] = typer.Option(None, "--status"),
           since: Optional[str] = typer.Option(None, "--since", help=FILTER_HELP),
           until: Optional[str] = typer.Option(None, "--until", help=FILTER_HELP),
           limit: int = typer.Option(50, "--limit", min=1),
           offset: int = typer.Option(0, "--offset", min=0),
           as_json: bool = JSON) -> None:
    """List dead letters, newest first."""
    rows = [r.as_dict() for r in _store().list(
        _filters(task, queue, priority, status, since, until), limit, offset)]
    emit(rows, as_json, DLQ_COLUMNS, "dead letters")


@dlq_app.command("show")
def dlq_show(ref: str = typer.Argument(..., help="The id, or the task id the logs print"),
             as_json: bool = JSON) -> None:
    """Everything about one dead letter, traceback included."""
    row = _store().find(ref).as_dict()
    if as_json:
        emit([row], True)
        return
    tb = row.pop("traceback", "")
    emit(row, False)
    if tb:
        console.print(tb, highlight=False, markup=False)


@dlq_app.command("replay")
def dlq_replay(dead_letter_id: Optional[int] = typer.Argument(None),
               all_: bool = typer.Option(False, "--all", help="Every row matching the filters"),
               task: Optional[str] = typer.Option(None, "--task"),
               queue: Optional[str] = typer.Option(None, "--queue"),
               priority: Optional[str] = typer.Option(None, "--priority"),
               status: str = typer.Option("pending", "--status"),
               as_json: bool = JSON) -> None:
    """Replay one dead letter (ID) or many (--all [filters]) through the gate."""
    from dlq.replay import replay_many, replay_one
    from producers import default_producer

    store, producer = _store(), default_producer()
    try:
        if dead_letter_id is not None and not all_:
            out = dataclasses.asdict(replay_one(store, producer, dead_letter_id))
            emit([out] if as_json else out, as_json)
            if out["outcome"] == "rejected":
                raise SystemExit(REJECTED)
            return
        if not all_:
            fail("give a dead-letter ID or --all", USAGE)
        ids = store.ids(_filters(task, queue, priority, status, None, None))
        counts = _replay_with_progress(store, producer, ids, replay_many, as_json)
    finally:
        producer.close()
    emit([dict(counts)] if as_json else dict(counts), as_json)


def _replay_with_progress(store: Any, producer: Any, ids: list[int], replay_many: Any,
                          quiet: bool) -> Any:
    from rich.progress import Progress

    if quiet or not console.is_terminal:
        return replay_many(store, producer, ids)
    with Progress(console=console) as progress:
        bar = progress.add_task("replaying", total=len(ids))
        return replay_many(store, producer, ids, lambda _o: progress.advance(bar))


@dlq_app.command("discard")
def dlq_discard(ids: list[int] = typer.Argument(None),
                all_: bool = typer.Option(False, "--all"),
                task: Optional[str] = typer.Option(None, "--task"),
                status: str = typer.Option("pending", "--status")) -> None:
    """Mark dead letters discarded (kept until purged)."""
    store = _store()
    if all_:
        ids = store.ids(_filters(task, None, None, status, None, None))
    if not ids:
        fail("give dead-letter IDs or --all", USAGE)
    for one in ids if not all_ else []:
        store.get(one)  # NotFound names the id
    console.print(f"discarded {store.discard(ids)} dead letter(s)")


@dlq_app.command("purge")
def dlq_purge(older_than: str = typer.Option("7d", "--older-than")) -> None:
    """Delete replayed/discarded rows older than --older-than (pending rows are kept)."""
    n = _store().purge(parse_duration(older_than), dt.datetime.now(dt.timezone.utc))
    console.print(f"purged {n} dead letter(s)")


@dlq_app.command("stats")
def dlq_stats(as_json: bool = JSON) -> None:
    """Counts by status, task and priority."""
    stats = _store().stats()
    if as_json:
        emit(stats, True)
        return
    for name, counts in stats.items():
        emit([{"key": k, "count": v} for k, v in counts.items()], False, ["key", "count"], name)


# -- database, schedules, metrics ------------------------------------------------------------

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
    """Each beat job: interval, runs, last run, next run, last outcome (from what ran)."""
    from schedules.status import schedule_rows

    emit(schedule_rows(time.time()), as_json,
         ["job", "interval_s", "runs", "last_run", "next_run", "last_outcome"], "schedules")


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
    """Print a new key for SLUICE_SECRET_KEY (it seals secret fields of dead letters)."""
    from cryptography.fernet import Fernet

    console.out(Fernet.generate_key().decode(), highlight=False)


@app.command()
def metrics(port: Optional[int] = typer.Option(None, "--port"),
            host: str = typer.Option("127.0.0.1", "--host"),
            once: bool = typer.Option(False, "--once", help="Print the metrics and exit")) -> None:
    """Serve Prometheus metrics over HTTP (or print them once)."""
    from prometheus_client import CollectorRegistry, generate_latest, start_http_server

    from schedules.metrics import SluiceCollector
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
def doctor(worker: Optional[str] = typer.Option(None, "--worker",
                                                help="Readiness of one worker (hostname)"),
           as_json: bool = JSON) -> None:
    """Check Redis, the database, migrations, config, outbox and spool sizes."""
    from schedules.doctor import run_checks, worker_state

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
           concurrency: Optional[int] = typer.Option(None, "--concurrency", "-c"),
           hostname: Optional[str] = typer.Option(None, "--hostname", "-n"),
           loglevel: str = typer.Option("info", "--loglevel", "-l")) -> None:
    """Run a worker: strict queue order, SIGTERM drains for SLUICE_DRAIN_SECONDS."""
    args = ["celery", "-A", "sluice.app", "worker", "-Q", queues, "-l", loglevel]
    if concurrency:
        args += ["-c", str(concurrency)]
    if hostname:
        args += ["-n", hostname]
    os.environ["REMAP_SIGTERM"] = "SIGQUIT"  # SIGTERM -> soft shutdown (the drain window)
    os.execvp(args[0], args)


LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@app.command()
def flower(address: str = typer.Option("127.0.0.1", "--address"),
           port: int = typer.Option(5555, "--port", envvar="FLOWER_PORT")) -> None:
    """Run Flower. Basic auth (FLOWER_BASIC_AUTH=user:password) is required unless Flower
    is bound to 127.0.0.1."""
    if address not in LOOPBACK and not os.environ.get("FLOWER_BASIC_AUTH"):
        fail(f"Flower on {address} needs FLOWER_BASIC_AUTH=user:password in the environment "
             "(only a 127.0.0.1 binding may run without it)", USAGE)
    args = ["celery", "-A", "sluice.app", "flower", f"--address={address}", f"--port={port}"]
    os.execvp(args[0], args)


@app.command()
def demo(duration: float = typer.Option(30.0, "--duration", min=5),
         plot: Optional[str] = typer.Option(None, "--plot", help="Write a PNG of the run"),
         workers: int = typer.Option(2, "--workers", min=1),
         as_json: bool = JSON) -> None:
    """The end-to-end showcase on an embedded Redis and SQLite store."""
    from sluice.cli.demo import run_demo

    raise SystemExit(run_demo(duration=duration, plot=plot, concurrency=workers,
                              as_json=as_json))


# -- the local stack (`make up`) --------------------------------------------------------------

@app.command("redis")
def redis_server(directory: Optional[str] = typer.Option(
                     None, "--dir", help="Data folder (default: SLUICE_DATA_DIR/redis)"),
                 bind: str = typer.Option("127.0.0.1", "--bind")) -> None:
    """Run the embedded Redis in the foreground on the port of SLUICE_REDIS_URL, append-only,
    in a local folder; SIGTERM or Ctrl-C stops it cleanly."""
    from pathlib import Path

    from sluice.cli.stack import run_redis

    run_redis(Path(directory) if directory else None, bind)


@app.command("wait")
def wait(timeout: float = typer.Option(60.0, "--timeout", min=0)) -> None:
    """Wait until Redis answers and the database schema is at head (exit 1 on timeout)."""
    from rich.markup import escape

    from sluice.cli.stack import wait_until_ready

    problem = wait_until_ready(timeout)
    if problem:
        fail(f"not ready after {timeout:g}s: {escape(problem)}")


_EXIT = {Rejected: REJECTED, InvalidPayload: USAGE, UnknownTask: USAGE, ConfigError: USAGE,
         UnknownPriority: USAGE, InvalidOption: USAGE,
         NotFound: FAILURE, ReplayRefused: FAILURE, PendingMigrations: FAILURE}


def main() -> None:
    """Console entry point: turns Sluice errors into messages and exit codes."""
    try:
        app()
    except Rejected as exc:
        err.print(f"rejected: {exc.reason} (level {getattr(exc.level, 'name', exc.level)}); "
                  f"Retry-After: {exc.retry_after_s:g}", highlight=False)
        raise SystemExit(REJECTED) from None
    except SluiceError as exc:
        fail(str(exc), _EXIT.get(type(exc), FAILURE))
    except Exception as exc:  # Redis or the database down: one clear line, no traceback
        import redis
        from sqlalchemy.exc import SQLAlchemyError

        if isinstance(exc, redis.RedisError):
            fail(f"Redis is unreachable ({type(exc).__name__}); check SLUICE_REDIS_URL")
        if isinstance(exc, SQLAlchemyError):
            fail(f"the database failed ({type(exc).__name__}); check SLUICE_DATABASE_URL")
        raise
