"""Workers: the task base class, the example tasks, hooks, the consumer and worker class."""

__all__ = ["sluice_task", "SluiceTask"]


def __getattr__(name: str) -> object:
    # lazy: importing `workers` must not build the Celery app (workers.base does)
    if name in __all__:
        from workers import base

        return getattr(base, name)
    raise AttributeError(name)
