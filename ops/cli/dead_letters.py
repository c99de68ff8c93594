"""`sluice dlq ...`: inspect, replay, discard and purge dead letters."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import typer

from ops.cli.app import JSON, _store, dlq_app, parse_duration
from ops.cli.output import REJECTED, USAGE, console, emit, fail

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
    now = dt.datetime.now(dt.UTC)
    return Filters(task, queue, priority, status,
                   now - parse_duration(since) if since else None,
                   now - parse_duration(until) if until else None)


FILTER_HELP = "Age like 1h or 7d"
DLQ_COLUMNS = ["id", "task_id", "task_name", "queue", "priority", "status", "reason",
               "attempts", "last_failed_at"]


@dlq_app.command("ls")
def dlq_ls(task: str | None = typer.Option(None, "--task"),
           queue: str | None = typer.Option(None, "--queue"),
           priority: str | None = typer.Option(None, "--priority"),
           status: str | None = typer.Option(None, "--status"),
           since: str | None = typer.Option(None, "--since", help=FILTER_HELP),
           until: str | None = typer.Option(None, "--until", help=FILTER_HELP),
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
def dlq_replay(dead_letter_id: int | None = typer.Argument(None),
               all_: bool = typer.Option(False, "--all", help="Every row matching the filters"),
               task: str | None = typer.Option(None, "--task"),
               queue: str | None = typer.Option(None, "--queue"),
               priority: str | None = typer.Option(None, "--priority"),
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
                task: str | None = typer.Option(None, "--task"),
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
    n = _store().purge(parse_duration(older_than), dt.datetime.now(dt.UTC))
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
