"""SQLAlchemy models of the dead-letter store. The schema is owned by Alembic (`dlq/migrations`)."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from sluice.connections import Base

__all__ = ["DeadLetter", "Quarantined", "Status", "TASK_ID_LENGTH"]

#: Task ids come from Celery headers, which any client can set: wide enough for anything sane,
#: and checked before writing (`dlq.store`) so that SQLite and PostgreSQL refuse the same ids.
TASK_ID_LENGTH = 255


class Status(enum.StrEnum):
    """Lifecycle of a dead letter."""

    PENDING = "pending"
    REPLAYED = "replayed"
    DISCARDED = "discarded"
    EXHAUSTED = "exhausted"


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class DeadLetter(Base):
    """One job that failed for good; one row per original task id."""

    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    task_id: Mapped[str] = mapped_column(String(TASK_ID_LENGTH), unique=True)
    task_name: Mapped[str] = mapped_column(String(200))
    queue: Mapped[str] = mapped_column(String(32))
    priority: Mapped[str] = mapped_column(String(16))
    payload: Mapped[Any] = mapped_column(JSON)
    exc_type: Mapped[str] = mapped_column(String(200))
    exc_message: Mapped[str] = mapped_column(Text)
    traceback: Mapped[str] = mapped_column(Text, default="")
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    first_failed_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    last_failed_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16), default=Status.PENDING.value)
    reason: Mapped[str] = mapped_column(String(200), default="")
    retryable: Mapped[bool] = mapped_column(Boolean, default=True)
    replayed_task_id: Mapped[str | None] = mapped_column(String(TASK_ID_LENGTH), nullable=True)
    replay_count: Mapped[int] = mapped_column(Integer, default=0)
    #: generation of the stored failure (0: the original job, n: its n-th replay); with
    #: `attempts` it decides which of two reports of one job is newer, clocks aside
    generation: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    #: the original payload, encrypted (`sluice.sealed`), when `payload` has masked secrets
    sealed: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: what the job's side effects are keyed by; a replay sends the same key
    effect_key: Mapped[str | None] = mapped_column(String(TASK_ID_LENGTH), nullable=True)
    next_retry_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True),
                                                              nullable=True)
    #: whose job it was (None: not recorded)
    tenant: Mapped[str | None] = mapped_column(String(200), nullable=True)
    #: on a workflow step: {"id": workflow id, "step": index}; a replay resumes the workflow
    workflow: Mapped[Any] = mapped_column(JSON(none_as_null=True), nullable=True)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow,
                                                    onupdate=utcnow)

    __table_args__ = (
        Index("ix_dead_letters_status_last", "status", "last_failed_at"),
        Index("ix_dead_letters_task_name", "task_name"),
        Index("ix_dead_letters_queue", "queue"),
        Index("ix_dead_letters_priority", "priority"),
        Index("ix_dead_letters_next_retry", "status", "next_retry_at"),
    )

    def as_dict(self) -> dict[str, Any]:
        """Column name -> JSON-ready value (the `--json` shape of the CLI)."""
        out: dict[str, Any] = {}
        for col in self.__table__.columns:
            value = getattr(self, col.key)
            out[col.key] = value.isoformat() if isinstance(value, dt.datetime) else value
        return out


class Quarantined(Base):
    """A spooled dead letter the store refused (too long a field, unreadable JSON, ...).

    Kept whole (`raw`, the spooled JSON) with the reason, so it is seen and can be fixed by
    hand, instead of failing every drain for ever. `digest` makes quarantining idempotent:
    a drain that is repeated after a crash does not keep it twice."""

    __tablename__ = "dead_letter_quarantine"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    task_id: Mapped[str | None] = mapped_column(Text, nullable=True)
    raw: Mapped[str] = mapped_column(Text)
    error: Mapped[str] = mapped_column(Text)
    quarantined_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    def as_dict(self) -> dict[str, Any]:
        """Column name -> JSON-ready value."""
        return {col.key: (v.isoformat() if isinstance(v := getattr(self, col.key), dt.datetime)
                          else v) for col in self.__table__.columns}
