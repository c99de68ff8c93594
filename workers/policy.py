"""Retry policy per priority, and the verdict on a failure: pure values, no Celery."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError

from sluice.errors import InvalidPayload, PermanentError
from sluice.priorities import Priority
from sluice.records import FailureReason

__all__ = ["RetryPolicy", "policy_for", "failure_reason", "PERMANENT", "INVALID_PAYLOAD",
           "EXHAUSTED", "MALFORMED", "UNKNOWN_TASK"]

PERMANENT = FailureReason.PERMANENT
INVALID_PAYLOAD = FailureReason.INVALID_PAYLOAD
EXHAUSTED = FailureReason.EXHAUSTED
MALFORMED = FailureReason.MALFORMED_MESSAGE
UNKNOWN_TASK = FailureReason.UNKNOWN_TASK


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter: the n-th retry waits U(0, min(cap, base*2**n))."""

    max_retries: int
    base_s: int
    cap_s: int
    jitter: bool = True


#: CRITICAL retries longest; LOW gives up soonest.
_DEFAULTS: dict[Priority, tuple[int, int]] = {
    Priority.CRITICAL: (8, 1),
    Priority.HIGH: (6, 2),
    Priority.NORMAL: (5, 2),
    Priority.LOW: (3, 5),
}


def policy_for(priority: Priority, cap_s: int, max_retries: int | None = None,
               base_s: int | None = None, jitter: bool = True) -> RetryPolicy:
    """The default policy of `priority`, with per-task overrides."""
    default_retries, default_base = _DEFAULTS[priority]
    return RetryPolicy(default_retries if max_retries is None else max_retries,
                       default_base if base_s is None else base_s, cap_s, jitter)


def failure_reason(exc: BaseException) -> tuple[str, bool]:
    """(reason, retryable) for a failure that reached the dead-letter store: transient
    errors that ran out of retries may be retried later by the DLQ retry job; permanent
    errors and invalid payloads never are."""
    if isinstance(exc, (InvalidPayload, ValidationError)):
        return INVALID_PAYLOAD, False
    if isinstance(exc, PermanentError):
        return PERMANENT, False
    return EXHAUSTED, True
