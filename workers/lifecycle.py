"""The worker class: Celery's, with the drain window announced when it starts; and the
consumer step that keeps the worker's readiness key alive while its event loop runs.

On SIGTERM (remapped to SIGQUIT by `REMAP_SIGTERM=SIGQUIT`, as `sluice worker` and the
Procfile do) Celery's soft shutdown stops consuming, gives running jobs
`worker_soft_shutdown_timeout` (= SLUICE_DRAIN_SECONDS) to finish, then cancels what is left;
with late acks those jobs go back to their queue. Celery sends `worker_shutting_down` only
after that window, so the readiness probe is flipped here, before it.
"""

from __future__ import annotations

import time
from typing import Any

from celery import bootsteps
from celery.apps.worker import Worker

from dlq.migrate import check_schema
from workers import hooks
from workers.hooks import WorkerDetail, emit

__all__ = ["SluiceWorker", "Heartbeat"]


class SluiceWorker(Worker):
    """Refuses to start on a stale schema; announces `shutting down` as the drain starts."""

    def on_before_init(self, **kwargs: Any) -> None:
        check_schema()  # PendingMigrations: "run `sluice db upgrade`"
        super().on_before_init(**kwargs)

    def wait_for_soft_shutdown(self) -> None:
        emit("shutting_down", WorkerDetail("shutting_down", self.hostname, time.time()))
        super().wait_for_soft_shutdown()


class Heartbeat(bootsteps.StartStopStep):
    """Renews the readiness key every `hooks.HEARTBEAT_INTERVAL_S` on the worker's own
    timer, so the key expires `hooks.HEARTBEAT_TTL_S` after the worker dies (or its event
    loop stops turning) and `sluice doctor --worker` says `unknown`. A consumer step, like
    Celery's own event heartbeat: started on every (re)connect, stopped before the next."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        self.tref: Any = None
        super().__init__(c, **kwargs)

    def start(self, c: Any) -> None:
        def beat() -> None:
            emit("heartbeat", WorkerDetail("heartbeat", c.hostname, time.time()))

        beat()
        self.tref = c.timer.call_repeatedly(hooks.HEARTBEAT_INTERVAL_S, beat)

    def stop(self, c: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None

    shutdown = stop
