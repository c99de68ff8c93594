"""Priorities and pressure levels: the two vocabularies every layer shares."""

from __future__ import annotations

import enum

from sluice.errors import UnknownPriority

__all__ = ["Priority", "PressureLevel", "QUEUES"]


class Priority(enum.IntEnum):
    """A job's priority. Lower value = more important; the value is also the queue order."""

    CRITICAL = 0
    HIGH = 1
    NORMAL = 2
    LOW = 3

    @property
    def queue(self) -> str:
        """The Celery queue of this priority (priority *is* the queue, never a message field)."""
        return self.name.lower()

    @classmethod
    def parse(cls, value: str | int | Priority) -> Priority:
        """Accept `Priority.HIGH`, `"high"`, `"HIGH"` or `0`-`3`; UnknownPriority otherwise."""
        if isinstance(value, Priority):
            return value
        try:
            return cls(value) if isinstance(value, int) else cls[str(value).strip().upper()]
        except (KeyError, ValueError):
            names = ", ".join(p.name for p in cls)
            raise UnknownPriority(f"unknown priority {value!r} (expected one of {names})") \
                from None


class PressureLevel(enum.IntEnum):
    """How full the queues are. UNKNOWN means Redis could not be reached."""

    NORMAL = 0
    WARNING = 1
    CRITICAL = 2
    SHED = 3
    UNKNOWN = 9


#: The four queues in the strict order workers consume them.
QUEUES: tuple[str, ...] = tuple(p.queue for p in Priority)
