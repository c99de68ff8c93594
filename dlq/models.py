"""SQLAlchemy models of the dead-letter store. The schema is owned by Alembic (`dlq/migrations`)."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from sluice.connections import Base

__all__ = ["DeadLetter", "Status"]


class Status(str, enum.Enum):
    """Lifecycle of a dead letter."""

    PENDING = "pending"
    REPLAYED = "replayed"
    DISCARDED = "discarded"
    EXHAUSTED = "exhausted"


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class DeadLetter(Base):
    """One job that failed for good; one row per original task id."""

    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    task_id: Mapped[str] = mapped_column(String(64), unique=True)
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
    replayed_task_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    replay_count: Mapped[int] = mapped_column(Integer, default=0)
    next_retry_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True),
                                                              nullable=True)
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
