"""When to retry a dead letter: a pure decision (values in, a frozen dataclass out)."""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass

__all__ = ["RetryAction", "RetryDecision", "next_retry", "retry_delay"]


class RetryAction(enum.StrEnum):
    """What the retry job does with one pending, retryable dead letter."""

    REPLAY = "replay"  #: replay it now through the gate
    WAIT = "wait"  #: not due yet
    EXHAUST = "exhaust"  #: past the horizon: mark it exhausted and alert


@dataclass(frozen=True, slots=True)
class RetryDecision:
    """`replay` now (and, if it fails again, not before `next_at`), `wait`, or `exhaust`."""

    action: RetryAction
    next_at: dt.datetime | None = None


def retry_delay(replay_count: int, base_s: float) -> dt.timedelta:
    """The delay after the `replay_count`-th replay: base, 2*base, 4*base, ..."""
    return dt.timedelta(seconds=base_s * 2 ** max(0, replay_count))


def next_retry(first_failed_at: dt.datetime, next_retry_at: dt.datetime | None,
               replay_count: int, now: dt.datetime, base_s: float,
               horizon_s: float) -> RetryDecision:
    """Decide for one pending, retryable dead letter at `now`.

    Past the horizon (24 h after the first failure by default) the row is exhausted.
    Otherwise it is replayed once `next_retry_at` has come, and the next attempt is
    scheduled after a doubled delay (15 min, 30 min, 1 h, ... by default).
    """
    horizon = first_failed_at + dt.timedelta(seconds=horizon_s)
    if now >= horizon:
        return RetryDecision(RetryAction.EXHAUST)
    due = next_retry_at or first_failed_at + retry_delay(0, base_s)
    if now < due:
        return RetryDecision(RetryAction.WAIT, due)
    # never schedule past the horizon: the row is looked at again then, and exhausted
    return RetryDecision(RetryAction.REPLAY, min(now + retry_delay(replay_count + 1, base_s), horizon))
