"""The dead-letter record: the value a failed job becomes, before any store sees it.

It lives in the kernel because three layers produce it (the worker's task base, the worker's
consumer for malformed messages, the broker transport) and one stores it (`dlq`).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DeadLetterRecord", "FailureReason", "MALFORMED_TASK"]

#: task name given to messages that could not even be decoded into a task.
MALFORMED_TASK = "<malformed>"


class FailureReason(enum.StrEnum):
    """Why a job became a dead letter (the row's `reason`)."""

    EXHAUSTED = "EXHAUSTED"  #: a transient failure that ran out of retries: retryable later
    PERMANENT = "PERMANENT"  #: the task raised PermanentError: retrying cannot help
    INVALID_PAYLOAD = "INVALID_PAYLOAD"  #: the payload does not match the task's model
    MALFORMED_MESSAGE = "MALFORMED_MESSAGE"  #: not a message any task can run
    UNKNOWN_TASK = "UNKNOWN_TASK"  #: no task is registered under the message's name


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadLetterRecord:
    """One failed job, as it will be stored. Times are epoch seconds (UTC)."""

    task_id: str
    task_name: str
    queue: str
    priority: str
    payload: Any
    exc_type: str
    exc_message: str
    traceback: str = ""
    attempts: int = 1
    first_failed_at: float = field(default_factory=time.time)
    last_failed_at: float = field(default_factory=time.time)
    reason: str = FailureReason.EXHAUSTED
    retryable: bool = True
    #: the original payload, encrypted (`sluice.sealed`), when `payload` has masked secrets
    sealed: str | None = None
    #: what the job's side effects are keyed by (its idempotency key, else its first task id)
    effect_key: str | None = None
    #: 0 for the original job, n for its n-th replay: with `attempts`, orders failures of
    #: one job without trusting the clocks of the hosts that report them
    generation: int = 0
    #: whose job it was (None: not recorded)
    tenant: str | None = None
    #: on a workflow step: `{"id": <workflow id>, "step": <index>}`; a replay resumes it
    workflow: dict[str, Any] | None = None

    def to_json(self) -> str:
        """Serialize for the spool (JSON: never pickle)."""
        return json.dumps(dataclasses.asdict(self), default=str, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> DeadLetterRecord:
        """Parse a spooled record; unknown keys are ignored so old spools stay readable."""
        data = json.loads(text)
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
