"""The dead-letter store: a narrow object over SQL (SQLite or PostgreSQL).

Every write is idempotent by task id, so the worker, the spool drain and a retry of either
can all write the same failure without creating a second row. Of two reports of one job the
newer is kept, by (generation, attempts) and not by wall clock: the hosts that report them
need not agree on the time. A record the database cannot take (a field too long, a value it
refuses) is quarantined with the reason instead of failing the whole batch on every try.
"""

from __future__ import annotations

import builtins  # `list` is also a method of the store
import datetime as dt
import hashlib
import logging
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Engine, delete, func, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from dlq.models import DeadLetter, Quarantined, Status
from dlq.rows import (
    Filters,
    Unreadable,
    Written,
    as_utc,
    misfit,
    order_key,
    printable,
    refused,
    short,
    to_datetime,
)
from sluice.connections import engine as default_engine
from sluice.errors import NotFound
from sluice.records import DeadLetterRecord

__all__ = ["DeadLetterStore", "Filters", "Unreadable", "Written", "to_datetime", "as_utc",
           "CHUNK"]

log = logging.getLogger("sluice.dlq")

_UPDATED_ON_REFAIL = ("task_name", "queue", "priority", "payload", "exc_type", "exc_message",
                      "traceback", "attempts", "last_failed_at", "reason", "retryable", "status",
                      "generation")

#: Rows per transaction, whatever the size of the spool being drained. Rows go as one
#: statement with many parameter sets (never one VALUES list of every row, which overflowed
#: SQLite's limit on SQL variables at ~13,000 rows).
CHUNK = 500


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
        """Write one failure (idempotent by task id; quarantined if the store refuses it)."""
        self.write([rec])

    def record_many(self, recs: Iterable[DeadLetterRecord]) -> int:
        """Write many failures; returns how many rows were written (after de-duplication).
        See `write`."""
        return self.write(recs).stored

    def write(self, recs: Iterable[DeadLetterRecord],
              unreadable: Iterable[Unreadable] = ()) -> Written:
        """Write failures in bounded batches; a task id already stored is updated only by a
        newer report of it (higher generation, then more attempts).

        A record the database refuses is quarantined, with `unreadable` lines: one bad
        record must not keep the others out. Raises (writing nothing more) only when the
        database is unavailable, so that a spool keeps everything for the next drain.
        """
        bad = [self._quarantine_row(u.raw, None, u.error) for u in unreadable]
        latest: dict[str, tuple[DeadLetterRecord, dict[str, Any]]] = {}
        for rec in recs:
            try:
                row = self._row(rec)
                problem = misfit(row)
            except (TypeError, ValueError, OverflowError) as exc:
                problem = short(exc)
            if problem is not None:
                bad.append(self._quarantine_row(rec.to_json(), rec.task_id, problem))
                continue
            old = latest.get(rec.task_id)
            if old is None or order_key(row) >= order_key(old[1]):
                latest[rec.task_id] = (rec, row)
        pairs = list(latest.values())
        stored = sum(self._write_chunk(pairs[i:i + CHUNK], bad)
                     for i in range(0, len(pairs), CHUNK))
        self._quarantine(bad)
        return Written(stored, len(bad))

    def _write_chunk(self, pairs: list[tuple[DeadLetterRecord, dict[str, Any]]],
                     bad: list[dict[str, Any]]) -> int:
        """Upsert one chunk; if the database refuses it, find the refused rows one by one."""
        try:
            with self.engine.begin() as conn:
                conn.execute(self._upsert(), [row for _, row in pairs])
            return len(pairs)
        except SQLAlchemyError as exc:
            if not refused(exc):
                raise
            if len(pairs) == 1:
                rec = pairs[0][0]
                bad.append(self._quarantine_row(rec.to_json(), rec.task_id, short(exc)))
                return 0
        return sum(self._write_chunk([pair], bad) for pair in pairs)

    def _quarantine_row(self, raw: str, task_id: Any, error: str) -> dict[str, Any]:
        raw = raw.replace("\x00", "\\u0000")  # PostgreSQL text cannot hold NUL
        log.error("dead letter %.300s quarantined: %s", task_id, error)
        return {"digest": hashlib.sha256(raw.encode("utf-8", "replace")).hexdigest(),
                "task_id": None if task_id is None else str(task_id).replace("\x00", ""),
                "raw": raw, "error": error.replace("\x00", ""),
                "quarantined_at": dt.datetime.now(dt.UTC)}

    def _quarantine(self, rows: list[dict[str, Any]]) -> None:
        """Keep refused records (once each: the digest is unique)."""
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        stmt = dialect.insert(Quarantined).on_conflict_do_nothing(index_elements=["digest"])
        for i in range(0, len(rows), CHUNK):
            with self.engine.begin() as conn:
                conn.execute(stmt, rows[i:i + CHUNK])

    def quarantined(self, limit: int = 100) -> list[Quarantined]:
        """Records the store refused, newest first."""
        stmt = select(Quarantined).order_by(Quarantined.id.desc()).limit(limit)
        with self.session() as s:
            return list(s.scalars(stmt).all())

    def quarantine_count(self) -> int:
        """How many refused records are kept in quarantine."""
        with self.session() as s:
            return int(s.scalar(select(func.count()).select_from(Quarantined)) or 0)

    def _row(self, rec: DeadLetterRecord) -> dict[str, Any]:
        first = to_datetime(rec.first_failed_at)
        next_retry = first + dt.timedelta(seconds=self.retry_base_s) if rec.retryable else None
        return {
            "task_id": rec.task_id, "task_name": rec.task_name, "queue": rec.queue,
            "priority": rec.priority, "payload": rec.payload, "exc_type": rec.exc_type,
            "exc_message": printable(rec.exc_message), "traceback": printable(rec.traceback),
            "attempts": rec.attempts, "first_failed_at": first,
            "last_failed_at": to_datetime(rec.last_failed_at), "status": Status.PENDING.value,
            "reason": rec.reason, "retryable": bool(rec.retryable), "replay_count": 0,
            "next_retry_at": next_retry, "updated_at": dt.datetime.now(dt.UTC),
            "generation": rec.generation, "sealed": rec.sealed, "effect_key": rec.effect_key,
            "tenant": rec.tenant, "workflow": rec.workflow,
        }

    def _upsert(self) -> Any:
        """INSERT .. ON CONFLICT (task_id) DO UPDATE, only for a newer report of the job.
        Executed with many parameter sets: compiled once (a VALUES list of 500 rows takes
        longer to compile than to run), batched by the driver.

        `next_retry_at` keeps the schedule the retry job set, but a row replayed by hand has
        none: its next failure then schedules it again (else it would never be retried nor
        exhausted). The effect key stays the original's; a sealed payload, the tenant and
        the workflow step are kept when the newer report lacks them."""
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        ins = dialect.insert(DeadLetter)
        new = ins.excluded
        changes: dict[str, Any] = {name: new[name] for name in _UPDATED_ON_REFAIL}
        changes["updated_at"] = new.updated_at
        changes["next_retry_at"] = func.coalesce(DeadLetter.next_retry_at, new.next_retry_at)
        changes["effect_key"] = func.coalesce(DeadLetter.effect_key, new.effect_key)
        changes["sealed"] = func.coalesce(new.sealed, DeadLetter.sealed)
        changes["tenant"] = func.coalesce(new.tenant, DeadLetter.tenant)
        changes["workflow"] = func.coalesce(new.workflow, DeadLetter.workflow)
        newer = (tuple_(new.generation, new.attempts)
                 > tuple_(DeadLetter.generation, DeadLetter.attempts))
        # RETURNING lets SQLAlchemy batch the parameter sets into multi-row INSERTs on
        # PostgreSQL ("insertmanyvalues"), instead of one round trip per row
        return ins.on_conflict_do_update(index_elements=["task_id"], set_=changes,
                                         where=newer).returning(DeadLetter.id)

    def list(self, filters: Filters = Filters(), limit: int = 50,
             offset: int = 0) -> Sequence[DeadLetter]:
        """Newest failures first, paged."""
        stmt = filters.apply(select(DeadLetter))
        stmt = stmt.order_by(DeadLetter.last_failed_at.desc(), DeadLetter.id.desc())
        with self.session() as s:
            return s.scalars(stmt.limit(limit).offset(offset)).all()

    def ids(self, filters: Filters = Filters()) -> builtins.list[int]:
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

    def find(self, ref: str) -> DeadLetter:
        """One row by numeric id or by task id (what logs print, e.g. `malformed-<uuid>`);
        NotFound if neither matches. An all-digit task id is found when no row has that id."""
        if ref.strip().isdigit():
            try:
                return self.get(int(ref))
            except NotFound:
                pass
        try:
            return self.get_by_task_id(ref)
        except NotFound:
            raise NotFound(f"no dead letter with id or task id {ref!r}") from None

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

    def set_status(self, ids: builtins.list[int], status: Status,
                   only_from: tuple[Status, ...] = tuple(Status), **values: Any) -> int:
        """Move rows currently in `only_from` to `status`; returns how many moved."""
        if not ids:
            return 0
        stmt = (update(DeadLetter).where(DeadLetter.id.in_(ids))
                .where(DeadLetter.status.in_([s.value for s in only_from]))
                .values(status=status.value, updated_at=dt.datetime.now(dt.UTC),
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

    def due_for_retry(self, now: dt.datetime,
                      limit: int = 500) -> builtins.list[DeadLetter]:
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
