"""Never lose a failure record: the store behind retries and a circuit breaker, then a spool.

Writes retry briefly (tenacity). A pybreaker circuit opens after `breaker_fail_max`
consecutive failed writes, or when the rolling average latency of the last `breaker_window`
writes exceeds `breaker_slow_seconds`; while open, records go straight to the spool (the
local fsync'd file, Redis only if the file cannot be written: `delivery.spool`) and the database
is probed again after `breaker_reset_timeout`.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from typing import Any

import pybreaker
from sqlalchemy.exc import SQLAlchemyError
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

from delivery.spool import spool
from dlq.store import DeadLetterStore
from sluice.connections import redis_client
from sluice.records import DeadLetterRecord
from sluice.settings import Settings, get_settings

__all__ = ["Recorder", "SlowCallListener", "get_recorder", "BEFORE_RECORD", "Annotator"]

log = logging.getLogger("sluice.dlq")

#: Takes a record about to be written and returns the record to write: what only the process
#: that saw the failure knows is added here (the worker adds the workflow step of the job).
Annotator = Callable[[DeadLetterRecord], DeadLetterRecord]
#: Called in order on every record before it is stored or spooled; one that raises is logged
#: and skipped: it never costs the record.
BEFORE_RECORD: list[Annotator] = []


class SlowCallListener(pybreaker.CircuitBreakerListener):
    """Opens the breaker when the average latency over the last `window` calls is too high
    (pybreaker counts failures only)."""

    def __init__(self, window: int, slow_seconds: float) -> None:
        self.latencies: collections.deque[float] = collections.deque(maxlen=window)
        self.slow_seconds = slow_seconds
        self._started = 0.0

    def before_call(self, cb: pybreaker.CircuitBreaker, func: Any, *a: Any, **kw: Any) -> None:
        self._started = time.monotonic()

    def success(self, cb: pybreaker.CircuitBreaker) -> None:
        self._observe(cb)

    def failure(self, cb: pybreaker.CircuitBreaker, exc: BaseException) -> None:
        self._observe(cb)

    def _observe(self, cb: pybreaker.CircuitBreaker) -> None:
        self.latencies.append(time.monotonic() - self._started)
        full = len(self.latencies) == self.latencies.maxlen
        if full and sum(self.latencies) / len(self.latencies) > self.slow_seconds:
            log.warning("dead-letter store slow (avg %.2fs): opening the circuit",
                        sum(self.latencies) / len(self.latencies))
            self.latencies.clear()
            cb.open()

    def state_change(self, cb: pybreaker.CircuitBreaker, old: Any, new: Any) -> None:
        log.warning("dead-letter store circuit %s -> %s", old.name, new.name)


class Recorder:
    """Writes dead letters to the store, or spools them when it cannot."""

    def __init__(self, store: DeadLetterStore, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.breaker = pybreaker.CircuitBreaker(
            fail_max=settings.breaker_fail_max, reset_timeout=settings.breaker_reset_timeout,
            listeners=[SlowCallListener(settings.breaker_window, settings.breaker_slow_seconds)],
            name="dead-letter-store")

    def record(self, rec: DeadLetterRecord) -> str:
        """Store `rec`; returns `db`, or `file` / `redis` when it had to be spooled."""
        rec = _annotated(rec)
        try:
            self.breaker.call(self._write, rec)
            return "db"
        except (pybreaker.CircuitBreakerError, SQLAlchemyError) as exc:
            log.warning("dead letter %s spooled: %s", rec.task_id, type(exc).__name__)
            return spool(rec, redis_client(), self.settings.spool_path)

    @retry(retry=retry_if_exception_type(SQLAlchemyError), stop=stop_after_attempt(3),
           wait=wait_exponential(multiplier=0.05, max=0.5), reraise=True)
    def _write(self, rec: DeadLetterRecord) -> None:
        self.store.record(rec)


def _annotated(rec: DeadLetterRecord) -> DeadLetterRecord:
    for annotate in BEFORE_RECORD:
        try:
            rec = annotate(rec)
        except Exception:
            log.exception("dead letter %s: annotator %s failed (the record is kept as it is)",
                          rec.task_id, getattr(annotate, "__name__", annotate))
    return rec


_recorder: Recorder | None = None


def get_recorder() -> Recorder:
    """The process-wide recorder (one breaker per process)."""
    global _recorder
    if _recorder is None:
        settings = get_settings()
        _recorder = Recorder(DeadLetterStore(retry_base_s=settings.dlq_retry_base), settings)
    return _recorder


def reset_recorder() -> None:
    """Forget the process-wide recorder (after settings changed)."""
    global _recorder
    _recorder = None
