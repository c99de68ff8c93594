"""The worker class: Celery's, refusing a stale schema, draining this host's dead-letter
spool as it starts, and announcing the drain window when it begins.

On SIGTERM (remapped to SIGQUIT by `REMAP_SIGTERM=SIGQUIT`, as `sluice worker` and the
Procfile do) Celery's soft shutdown stops consuming, gives running jobs
`worker_soft_shutdown_timeout` (= SLUICE_DRAIN_SECONDS) to finish, then cancels what is left;
with late acks those jobs go back to their queue. Celery sends `worker_shutting_down` only
after that window, so the readiness probe is flipped here, before it.
"""

from __future__ import annotations

import time
from typing import Any

from celery.apps.worker import Worker

from delivery.recovery import announce, restore_held
from delivery.transport import use_holder
from dlq.drain import drain_local_spool
from dlq.migrate import check_schema
from sluice.app import WORKER_TRANSPORT
from sluice.connections import redis_client
from sluice.settings import get_settings
from workers.hooks import HookEvent, WorkerDetail, emit

__all__ = ["SluiceWorker"]


class SluiceWorker(Worker):
    """Refuses to start on a stale schema; announces `shutting down` as the drain starts."""

    def on_before_init(self, **kwargs: Any) -> None:
        self.app.conf.broker_transport = WORKER_TRANSPORT
        check_schema()  # PendingMigrations: "run `sluice db upgrade`"
        drain_local_spool()  # only a process on this host can reach this host's spool file
        self._take_over_holdings()
        super().on_before_init(**kwargs)

    def _take_over_holdings(self) -> None:
        """Index what this worker will hold under its name; give back what its previous life
        under that name held (it died with it), before consuming anything."""
        client, settings = redis_client(), get_settings()
        use_holder(self.hostname)
        restore_held(client, self.hostname)
        announce(client, self.hostname, settings.worker_heartbeat_ttl)

    def wait_for_soft_shutdown(self) -> None:
        emit(HookEvent.SHUTTING_DOWN, WorkerDetail(HookEvent.SHUTTING_DOWN, self.hostname,
                                                   time.time()))
        super().wait_for_soft_shutdown()
