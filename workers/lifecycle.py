"""The worker class: Celery's, with the drain window announced when it starts.

On SIGTERM (remapped to SIGQUIT by `REMAP_SIGTERM=SIGQUIT`, as `sluice worker` and the
Procfile do) Celery's soft shutdown stops consuming, gives running jobs
`worker_soft_shutdown_timeout` (= SLUICE_DRAIN_SECONDS) to finish, then cancels what is left;
with late acks those jobs go back to their queue. Celery sends `worker_shutting_down` only
after that window, so the readiness probe is flipped here, before it.
"""

from __future__ import annotations

import time

from celery.apps.worker import Worker

from workers.hooks import WorkerDetail, emit

__all__ = ["SluiceWorker"]


class SluiceWorker(Worker):
    """Announces `shutting down` as the drain starts."""

    def wait_for_soft_shutdown(self) -> None:
        emit("shutting_down", WorkerDetail("shutting_down", self.hostname, time.time()))
        super().wait_for_soft_shutdown()
