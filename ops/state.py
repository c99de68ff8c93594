"""The one place that forgets process-wide state: after the environment changed (tests, the
demo and the benchmarks switch Redis and databases within one process)."""

from __future__ import annotations

__all__ = ["reset_process_state"]


def reset_process_state() -> None:
    """Stop the default producer's monitor; forget the dead-letter recorder (and its circuit
    breaker), the cached settings and every connection; point this process's Celery app at
    the Redis the settings now name (its broker URL was read when it was imported, and its
    control and event clients would go on talking to that one)."""
    from dlq.recorder import reset_recorder
    from producers import reset_default_producer
    from sluice.app import app, celery_config
    from sluice.connections import reset
    from sluice.errors import SluiceError
    from sluice.settings import get_settings

    reset_default_producer()
    reset_recorder()
    reset()
    try:
        config = celery_config(get_settings())
    except SluiceError:  # an invalid environment: whoever reads the settings next says so
        return
    if app.conf.broker_url != config["broker_url"]:
        app.conf.update({k: config[k] for k in ("broker_url", "broker_use_ssl",
                                                "broker_transport_options",
                                                "redbeat_redis_url")})
        app._pool = None  # its connection and producer pools were for the old URL
        app.amqp._producer_pool = None
