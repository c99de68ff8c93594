"""What a dead-letter row may hold, and how rows are chosen and ordered: pure helpers of the
store (validation before writing, so SQLite and PostgreSQL refuse the same records)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import String
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, SQLAlchemyError, StatementError

from dlq.models import DeadLetter

__all__ = ["Filters", "Unreadable", "Written", "to_datetime", "as_utc", "misfit", "refused",
           "short", "order_key", "printable"]


def to_datetime(epoch: float) -> dt.datetime:
    """Epoch seconds -> aware UTC datetime."""
    return dt.datetime.fromtimestamp(epoch, dt.UTC)


def as_utc(value: dt.datetime) -> dt.datetime:
    """SQLite hands datetimes back naive; every stored time is UTC."""
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


@dataclass(frozen=True, slots=True)
class Written:
    """What a batch write did: rows written (after de-duplication by task id), records
    quarantined."""

    stored: int = 0
    quarantined: int = 0


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A spooled line that is not a dead-letter record at all (kept in quarantine)."""

    raw: str
    error: str


def refused(exc: SQLAlchemyError) -> bool:
    """Whether the database refused the data itself (as opposed to being unavailable, busy
    or locked): only then is a record quarantined rather than retried later."""
    if isinstance(exc, (DataError, IntegrityError)):
        return True
    return isinstance(exc, StatementError) and not isinstance(exc, DBAPIError)


def short(exc: BaseException) -> str:
    """One line of an error, without the SQL and parameters SQLAlchemy appends."""
    cause = getattr(exc, "orig", None) or exc
    text = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
    return f"{type(cause).__name__}: {text}"[:1000]


def printable(text: Any) -> Any:
    """Diagnostic text as PostgreSQL can store it (no NUL), rather than refusing a failure
    because its exception message quoted binary data."""
    return text.replace("\x00", "\\x00") if isinstance(text, str) else text


def misfit(row: dict[str, Any]) -> str | None:
    """Why `row` cannot be stored as it is (None if it can). SQLite does not enforce
    VARCHAR lengths and PostgreSQL does: checking here makes both refuse the same rows."""
    for key, length in _STRINGS:
        value = row.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            return f"{key} is not a string: {type(value).__name__}"
        if length and len(value) > length:
            return f"{key} is {len(value)} characters long; the store keeps at most {length}"
    for key in _INTEGERS:
        if not isinstance(row[key], int) or isinstance(row[key], bool):
            return f"{key} is not an integer: {row[key]!r:.50}"
    return None


_STRINGS = [(c.key, c.type.length) for c in DeadLetter.__table__.columns
            if isinstance(c.type, String)]
_INTEGERS = ("attempts", "generation")


@dataclass(frozen=True, slots=True)
class Filters:
    """What `list` and bulk replay select. Every field is optional."""

    task_name: str | None = None
    queue: str | None = None
    priority: str | None = None
    status: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None

    def apply(self, stmt: Any) -> Any:
        """Add the WHERE clauses of the fields that are set."""
        for column, value in (("task_name", self.task_name), ("queue", self.queue),
                              ("priority", self.priority), ("status", self.status)):
            if value is not None:
                stmt = stmt.where(getattr(DeadLetter, column) == value)
        if self.since is not None:
            stmt = stmt.where(DeadLetter.last_failed_at >= self.since)
        if self.until is not None:
            stmt = stmt.where(DeadLetter.last_failed_at < self.until)
        return stmt


def order_key(row: dict[str, Any]) -> tuple[int, int]:
    """Which of two reports of one job is newer: a later replay, then more attempts."""
    return (row["generation"], row["attempts"])
