"""The durable CRITICAL outbox: where CRITICAL jobs wait while Redis is unreachable.

A CRITICAL job is never dropped: if the broker is down, the fully built Celery message
(id, name, args, headers, queue) is committed to SQL; `flush_outbox` sends it once Redis is
back, reusing the same task id so a resend after a crash is recognisably the same job.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import Any, cast

from sqlalchemy import JSON, CursorResult, DateTime, Integer, String, delete, func, select
from sqlalchemy.orm import Mapped, mapped_column

from sluice.connections import Base, session_factory

__all__ = ["OutboxEntry", "add_to_outbox", "flush_outbox", "outbox_size"]

log = logging.getLogger("sluice.outbox")


class OutboxEntry(Base):
    """A CRITICAL job accepted while Redis was down, not yet sent."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[str] = mapped_column(String(64), unique=True)
    task_name: Mapped[str] = mapped_column(String(200))
    queue: Mapped[str] = mapped_column(String(32))
    payload: Mapped[Any] = mapped_column(JSON)
    headers: Mapped[Any] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


def add_to_outbox(task_id: str, task_name: str, queue: str, payload: Any,
                  headers: dict[str, Any]) -> None:
    """Commit one job to the outbox (raises if the database is down too)."""
    with session_factory().begin() as session:
        session.add(OutboxEntry(task_id=task_id, task_name=task_name, queue=queue,
                                payload=payload, headers=headers,
                                created_at=dt.datetime.now(dt.UTC)))


def outbox_size() -> int:
    """How many CRITICAL jobs wait in the outbox."""
    with session_factory()() as session:
        return int(session.scalar(select(func.count()).select_from(OutboxEntry)) or 0)


def flush_outbox(send: Callable[[OutboxEntry], None], limit: int = 1000) -> int:
    """Send waiting jobs with `send(entry)`, oldest first; returns how many were sent.

    Each entry is deleted and sent inside one transaction: a concurrent flusher (another
    producer, the reconcile job) finds the row gone and skips it, and a failed send rolls the
    delete back. A crash between send and commit resends the same task id (at-least-once).
    """
    with session_factory()() as session:
        ids = session.scalars(select(OutboxEntry.id).order_by(OutboxEntry.id).limit(limit)).all()
    sent = 0
    for entry_id in ids:
        with session_factory().begin() as session:
            entry = session.get(OutboxEntry, entry_id)
            if entry is None:
                continue
            gone = session.execute(delete(OutboxEntry).where(OutboxEntry.id == entry_id))
            if cast(CursorResult[Any], gone).rowcount:
                send(entry)
                sent += 1
    if sent:
        log.info("outbox flushed: %d CRITICAL job(s) sent", sent)
    return sent
