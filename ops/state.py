"""The one place that forgets process-wide state: after the environment changed (tests, the
demo and the benchmarks switch Redis and databases within one process)."""

from __future__ import annotations

__all__ = ["reset_process_state"]


def reset_process_state() -> None:
    """Stop the default producer's monitor; forget the dead-letter recorder (and its circuit
    breaker), the cached settings and every connection."""
    from dlq.recorder import reset_recorder
    from producers import reset_default_producer
    from sluice.connections import reset

    reset_default_producer()
    reset_recorder()
    reset()
