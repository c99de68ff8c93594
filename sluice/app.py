"""The Celery app, `sluice.app:app`, shared by producers, workers, beat and Flower.

The kernel never imports the domain packages: task modules are listed by name (`include`)
and the beat schedule is looked up by name, the way Celery itself finds them.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

from celery import Celery
from kombu import Exchange, Queue
from kombu.utils.imports import symbol_by_name

from sluice import keys
from sluice.connections import ssl_options
from sluice.priorities import QUEUES
from sluice.settings import Settings, get_settings

__all__ = ["app", "create_app", "TASK_MODULES", "WORKER_TRANSPORT"]

#: Modules a worker (and Flower, however it is started) imports: the tasks, the signal
#: adapter, and `ops.flowerconfig`, which locks Flower's doors only in a Flower process.
TASK_MODULES: tuple[str, ...] = (
    "workers.tasks.audit",
    "workers.tasks.auth",
    "workers.tasks.email",
    "workers.tasks.report",
    "workers.tasks.data",
    "workers.tasks.export",
    "workers.tasks.analytics",
    "workers.tasks.cleanup",
    "workers.tasks.demo",
    "workers.signals",
    "schedules.jobs",
    "ops.flowerconfig",
)


def route_by_priority(name: str, args: object, kwargs: object, options: object,
                      task: object = None, **_: object) -> dict[str, str] | None:
    """Celery router: a Sluice task goes to the queue of its default priority."""
    priority = getattr(task, "sluice_priority", None)
    return {"queue": priority.queue} if priority is not None else None


def transport_options(settings: Settings) -> dict[str, object]:
    """Redis transport options: strict queue order and an explicit visibility timeout."""
    return {
        "queue_order_strategy": "priority",
        "visibility_timeout": settings.visibility_timeout,
        "unacked_restore_interval": settings.unacked_restore_interval,
        "unacked_restore_throttle": settings.unacked_restore_throttle,
        "socket_timeout": 10,
        "socket_connect_timeout": 5,
        "health_check_interval": 25,
    }


#: The hardened Redis transport, loaded by workers only (`ops.worker`): everything else
#: (producers, beat, Flower) uses a plain `redis://` URL, which is also how Flower recognises
#: the broker to show its queues.
WORKER_TRANSPORT = "delivery.transport:Transport"


def celery_config(settings: Settings) -> dict[str, object]:
    """The Celery configuration derived from Sluice settings (pure: testable without Redis)."""
    url = settings.redis_url.get_secret_value()
    exchange = Exchange("sluice", type="direct")
    return {
        "broker_url": url,
        "broker_use_ssl": ssl_options(url),
        "broker_transport_options": transport_options(settings),
        "broker_connection_retry_on_startup": True,
        "task_queues": [Queue(q, exchange, routing_key=q) for q in QUEUES],
        "task_default_queue": "normal",
        "task_routes": (route_by_priority,),
        "task_default_exchange": "sluice",
        "task_default_routing_key": "normal",
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "event_serializer": "json",
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        # a reconnect lets running jobs finish; they are acked then (delivery.transport), so
        # they run once (Celery 6 would cancel them, and they would run again)
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "worker_prefetch_multiplier": 1,
        "worker_eta_task_limit": settings.worker_eta_task_limit,
        "worker_soft_shutdown_timeout": settings.drain_seconds,
        "worker_enable_soft_shutdown_on_idle": False,
        # task events cost three publishes per job; Flower switches them on when it runs
        "worker_send_task_events": False,
        "task_time_limit": settings.task_time_limit,
        "task_soft_time_limit": settings.task_soft_time_limit,
        "worker_consumer": "workers.consumer:SluiceConsumer",
        "beat_scheduler": "redbeat.RedBeatScheduler",
        "redbeat_redis_url": url,
        "redbeat_key_prefix": keys.REDBEAT_PREFIX,
        "redbeat_lock_timeout": settings.beat_lock_timeout,
        "beat_max_loop_interval": min(60, max(1, int(settings.reconcile_interval))),
        "timezone": "UTC",
        "enable_utc": True,
    }


class SluiceCelery(Celery):
    """Celery, with the worker class that announces the drain (`ops.worker`)."""

    @cached_property
    def Worker(self) -> Any:  # noqa: N802  (Celery's name)
        return self.subclass_with_self("ops.worker:SluiceWorker")


def create_app(settings: Settings | None = None) -> Celery:
    """Build the Sluice Celery app from `settings` (default: the environment)."""
    settings = settings or get_settings()
    app = SluiceCelery("sluice", include=[*TASK_MODULES, *settings.task_modules],
                       set_as_current=True)
    config = celery_config(settings)
    if config["redbeat_lock_timeout"] is None:
        del config["redbeat_lock_timeout"]
    app.conf.update(config)
    app.add_defaults(lambda: {"beat_schedule": _beat_schedule(settings)})
    return app


def _beat_schedule(settings: Settings) -> dict[str, dict[str, object]]:
    build: Any = symbol_by_name("schedules.beat:build_schedule")
    return dict(build(settings))


app = create_app()
