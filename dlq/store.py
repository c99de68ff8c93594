"""The dead-letter store: a narrow object over SQL (SQLite or PostgreSQL).

Every write is idempotent by task id, so the worker, the spool drain and a retry of either
can all write the same failure without creating a second row.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from dlq.models import DeadLetter, Status
from sluice.connections import engine as default_engine
from sluice.errors import NotFound
from sluice.records import DeadLetterRecord

__all__ = ["DeadLetterStore", "Filters", "to_datetime", "as_utc"]

_UPDATED_ON_REFAIL = ("task_name", "queue", "priority", "payload", "exc_type", "exc_message",
                      "traceback", "attempts", "last_failed_at", "reason", "retryable", "status")


def to_datetime(epoch: float) -> dt.datetime:
    """Epoch seconds -> aware UTC datetime."""
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc)


def as_utc(value: dt.datetime) -> dt.datetime:
    """SQLite hands datetimes back naive; every stored time is UTC."""
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


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


class DeadLetterStore:
    """record / list / get / discard / purge / stats over the `dead_letters` table."""

    def __init__(self, eng: Engine | None = None, retry_base_s: float = 900.0) -> None:
        self.engine = eng or default_engine()
        self.retry_base_s = retry_base_s
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def session(self) -> Session:
        """A new session; the caller commits."""
        return self._sessions()

    def record(self, rec: DeadLetterRecord) -> None:
        """Write one failure (idempotent by task id)."""
        self.record_many([rec])

    def record_many(self, recs: Iterable[DeadLetterRecord]) -> int:
        """Write many failures in one statement; a task id already stored is updated only by a
        newer failure. Returns how many records were given (after de-duplication)."""
        latest: dict[str, DeadLetterRecord] = {}
        for rec in recs:
            old = latest.get(rec.task_id)
            if old is None or rec.last_failed_at >= old.last_failed_at:
                latest[rec.task_id] = rec
        if not latest:
            return 0
        with self.engine.begin() as conn:
            conn.execute(self._upsert([self._row(r) for r in latest.values()]))
        return len(latest)

    def _row(self, rec: DeadLetterRecord) -> dict[str, Any]:
        first = to_datetime(rec.first_failed_at)
        next_retry = first + dt.timedelta(seconds=self.retry_base_s) if rec.retryable else None
        return {
            "task_id": rec.task_id, "task_name": rec.task_name, "queue": rec.queue,
            "priority": rec.priority, "payload": rec.payload, "exc_type": rec.exc_type,
            "exc_message": rec.exc_message, "traceback": rec.traceback,
            "attempts": rec.attempts, "first_failed_at": first,
            "last_failed_at": to_datetime(rec.last_failed_at), "status": Status.PENDING.value,
            "reason": rec.reason, "retryable": rec.retryable, "replay_count": 0,
            "next_retry_at": next_retry, "updated_at": dt.datetime.now(dt.timezone.utc),
        }

    def _upsert(self, rows: list[dict[str, Any]]) -> Any:
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        ins = dialect.insert(DeadLetter).values(rows)
        changes = {name: ins.excluded[name] for name in _UPDATED_ON_REFAIL}
        changes["updated_at"] = ins.excluded.updated_at
        return ins.on_conflict_do_update(
            index_elements=["task_id"], set_=changes,
            where=DeadLetter.last_failed_at < ins.excluded.last_failed_at)

    def list(self, filters: Filters = Filters(), limit: int = 50,
             offset: int = 0) -> Sequence[DeadLetter]:
        """Newest failures first, paged."""
        stmt = filters.apply(select(DeadLetter))
        stmt = stmt.order_by(DeadLetter.last_failed_at.desc(), DeadLetter.id.desc())
        with self.session() as s:
            return s.scalars(stmt.limit(limit).offset(offset)).all()

    def ids(self, filters: Filters = Filters()) -> list[int]:
        """Every id matching `filters`, oldest first (for bulk operations)."""
        with self.session() as s:
            stmt = filters.apply(select(DeadLetter.id)).order_by(DeadLetter.id)
            return list(s.scalars(stmt).all())

    def get(self, dead_letter_id: int) -> DeadLetter:
        """One row by id; NotFound if there is none."""
        with self.session() as s:
            row = s.get(DeadLetter, dead_letter_id)
        if row is None:
            raise NotFound(f"no dead letter with id {dead_letter_id}")
        return row

    def get_by_task_id(self, task_id: str) -> DeadLetter:
        """One row by the failed job's task id; NotFound if there is none."""
        with self.session() as s:
            row = s.scalar(select(DeadLetter).where(DeadLetter.task_id == task_id))
        if row is None:
            raise NotFound(f"no dead letter for task id {task_id}")
        return row

    def discard(self, ids: Iterable[int]) -> int:
        """Mark rows `discarded` (kept until purged). Returns how many changed."""
        return self.set_status(list(ids), Status.DISCARDED,
                               only_from=(Status.PENDING, Status.EXHAUSTED))

    def set_status(self, ids: list[int], status: Status,
                   only_from: tuple[Status, ...] = tuple(Status), **values: Any) -> int:
        """Move rows currently in `only_from` to `status`; returns how many moved."""
        if not ids:
            return 0
        stmt = (update(DeadLetter).where(DeadLetter.id.in_(ids))
                .where(DeadLetter.status.in_([s.value for s in only_from]))
                .values(status=status.value, updated_at=dt.datetime.now(dt.timezone.utc),
                        **values))
        with self.engine.begin() as conn:
            return int(conn.execute(stmt).rowcount or 0)

    def purge(self, older_than: dt.timedelta, now: dt.datetime) -> int:
        """Delete `replayed`/`discarded` rows last changed before `now - older_than`.
        `pending` and `exhausted` rows are never purged."""
        cutoff = now - older_than
        stmt = (delete(DeadLetter)
                .where(DeadLetter.status.in_([Status.REPLAYED.value, Status.DISCARDED.value]))
                .where(DeadLetter.updated_at < cutoff))
        with self.engine.begin() as conn:
            return int(conn.execute(stmt).rowcount or 0)

    def stats(self) -> dict[str, dict[str, int]]:
        """Counts by status, task name and priority."""
        out: dict[str, dict[str, int]] = {}
        with self.session() as s:
            for key, column in (("by_status", DeadLetter.status),
                                ("by_task", DeadLetter.task_name),
                                ("by_priority", DeadLetter.priority)):
                rows = s.execute(select(column, func.count()).group_by(column)).all()
                out[key] = {str(k): int(v) for k, v in rows}
        out["total"] = {"all": sum(out["by_status"].values())}
        return out

    def due_for_retry(self, now: dt.datetime, limit: int = 500) -> list[DeadLetter]:
        """Pending, retryable rows whose next retry time has come."""
        stmt = (select(DeadLetter).where(DeadLetter.status == Status.PENDING.value)
                .where(DeadLetter.retryable.is_(True))
                .where(DeadLetter.next_retry_at <= now)
                .order_by(DeadLetter.next_retry_at).limit(limit))
        with self.session() as s:
            return list(s.scalars(stmt).all())

    def count(self, filters: Filters = Filters()) -> int:
        """How many rows match."""
        with self.session() as s:
            return int(s.scalar(filters.apply(select(func.count()).select_from(DeadLetter)))
                       or 0)
