"""Printing for the CLI: rich tables in a terminal, JSON for scripts; exit codes."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any, NoReturn

from rich.console import Console
from rich.table import Table

__all__ = ["console", "err", "emit", "table", "fail", "OK", "FAILURE", "USAGE", "REJECTED"]

OK, FAILURE, USAGE, REJECTED = 0, 1, 2, 3

console = Console()
if not console.is_terminal:  # scripts and CI: wide enough that tables are not truncated
    console = Console(width=160)
err = Console(stderr=True)


def emit(rows: Any, as_json: bool, columns: Sequence[str] | None = None,
         title: str | None = None) -> None:
    """Print `rows` (a list of dicts) as JSON or as a table of `columns`."""
    if as_json:
        sys.stdout.write(json.dumps(rows, default=str, indent=None) + "\n")
        return
    if isinstance(rows, dict):
        rows = [{"key": k, "value": v} for k, v in rows.items()]
        columns = ["key", "value"]
    console.print(table(rows, columns or (list(rows[0]) if rows else []), title))


def table(rows: Iterable[dict[str, Any]], columns: Sequence[str],
          title: str | None = None) -> Table:
    out = Table(title=title)
    for col in columns:
        out.add_column(col)
    for row in rows:
        out.add_row(*(_cell(row.get(c)) for c in columns))
    return out


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)[:80]
    return str(value)


def fail(message: str, code: int = FAILURE) -> NoReturn:
    """Print `message` to stderr and exit with `code`."""
    err.print(f"[red]error:[/red] {message}", highlight=False)
    raise SystemExit(code)
