"""`sluice tasks`, `submit`, `pressure` and `killswitch`: what producers and the gate do."""

from __future__ import annotations

import json
import time
from typing import Any

import typer

from ops.cli.app import JSON, app, killswitch_app
from ops.cli.output import USAGE, console, emit, fail
from sluice import keys

# -- tasks, submit, pressure ---------------------------------------------------------------

@app.command()
def tasks(as_json: bool = JSON) -> None:
    """List the registered tasks with their default priority and payload schema."""
    from ops.server.views import task_rows
    from sluice.app import app as celery_app

    rows = task_rows(celery_app)
    if as_json:
        emit(rows, True)
        return
    for row in rows:
        row["fields"] = ", ".join(row["schema"].get("properties", {}))
    emit(rows, False, ["name", "priority", "queue", "fields"], "tasks")


@app.command()
def submit(task: str = typer.Argument(..., help="Task name, e.g. email.send"),
           payload: str = typer.Option("{}", "--payload", "-p", help="JSON object"),
           priority: str | None = typer.Option(None, "--priority", "-P"),
           key: str | None = typer.Option(None, "--key", help="Idempotency key"),
           countdown: float | None = typer.Option(None, "--countdown", min=0),
           deadline: float | None = typer.Option(
               None, "--deadline", help="Seconds it may wait before it starts"),
           tenant: str | None = typer.Option(None, "--tenant", help="Whose job it is"),
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
                                  countdown=countdown, deadline=deadline, tenant=tenant)
    finally:
        producer.close()
    row = {"task_id": receipt.task_id, "task": task, "queue": receipt.queue,
           "priority": receipt.priority.name, "level": receipt.level.name,
           "delayed_ms": receipt.delayed_ms, "duplicate": receipt.duplicate,
           "outboxed": receipt.outboxed}
    emit([row] if as_json else row, as_json)


def _pressure_rows() -> dict[str, Any]:
    """What the server's `/v1/pressure` shows, from a fresh sample; the drain rate is the
    producers' (shared in Redis) while this process has not measured one of its own."""
    import dataclasses

    from ops.server.views import pressure_view, submission_counts
    from producers.deadline import Drain
    from producers.monitor import PressureMonitor
    from producers.pressure import Thresholds
    from sluice.connections import redis_client, texts
    from sluice.settings import get_settings

    s, client = get_settings(), redis_client()
    snap = PressureMonitor(client, Thresholds.from_settings(s)).tick()
    shared = float(texts(client.hgetall(keys.PRESSURE_STATE)).get("drain_rate", -1))
    if snap.drain.rate is None and shared >= 0:
        snap = dataclasses.replace(snap, drain=Drain(rate=shared, at=snap.at, saturated=True))
    return pressure_view(snap, s, submission_counts(client))


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
    from ops.cli.output import table

    waits = data["predicted_wait_s"]
    rows = [{"queue": q, "depth": n, "oldest_age_s": data["oldest_age_s"].get(q, 0),
             "predicted_wait_s": waits.get(q.upper())} for q, n in data["depths"].items()]
    rows.append({"queue": "total", "depth": data["depth"]})
    t, rate = data["thresholds"], data["drain_rate"]
    title = (f"level {data['level']}  drain {'?' if rate is None else f'{rate:.1f}'} jobs/s  "
             f"(warning {t['warning']}, critical {t['critical']}, shed {t['shed']})")
    main = table(rows, ["queue", "depth", "oldest_age_s", "predicted_wait_s"], title)
    tenants = [{"priority": p, **row} for p, rows_ in data.get("tenants", {}).items()
               for row in rows_]
    if not tenants:
        return main
    from rich.console import Group

    return Group(main, table(tenants, ["priority", "tenant", "offered_per_s", "accepted_per_s",
                                       "shed_per_s"], "busiest tenants (last seconds)"))


# -- kill switches ---------------------------------------------------------------------------

@killswitch_app.command("on")
def killswitch_on(target: str = typer.Argument(
                      ..., help="priority:LOW, task:email.send or tenant:acme"),
                  reason: str = typer.Option("switched off", "--reason", "-r")) -> None:
    """Refuse new submissions of a priority, task or tenant (Rejected KILL_SWITCH)."""
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
