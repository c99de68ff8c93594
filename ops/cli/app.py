"""The `sluice` Typer apps and what every command module shares: `--json`, durations, the
store (refused on a stale schema)."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import typer

from ops.cli.output import USAGE, fail

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
