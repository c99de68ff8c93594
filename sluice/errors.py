"""Every error Sluice raises on purpose derives from `SluiceError`.

As in procrastinate, the class docstring is the default message, so `raise BrokerUnavailable()`
still says something useful.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "SluiceError",
    "UsageError",
    "Unavailable",
    "ConfigError",
    "SecretKeyMissing",
    "UnknownTask",
    "UnknownPriority",
    "InvalidPayload",
    "Rejected",
    "BrokerUnavailable",
    "DatabaseUnavailable",
    "PendingMigrations",
    "NotFound",
    "ReplayRefused",
    "PermanentError",
    "InvalidOption",
    "OutcomeUnknown",
    "InvalidWorkflow",
    "InvalidSchedules",
    "StepShed",
]


class SluiceError(Exception):
    """A Sluice error."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class UsageError(SluiceError):
    """The caller asked for something impossible (bad input, options or configuration):
    retrying the same request cannot help. The CLI exits 2."""


class Unavailable(SluiceError):
    """A server Sluice needs (Redis, the database) cannot be reached: retry later."""


class ConfigError(UsageError):
    """The configuration is inconsistent."""


class SecretKeyMissing(ConfigError):
    """A job carrying secret values was submitted, or a sealed value opened, without a key."""

    def __init__(self, task_name: str = "") -> None:
        what = (f"this {task_name!r} job carries secret fields" if task_name
                else "secrets are sealed")
        super().__init__(f"{what}: set SLUICE_SECRET_KEY (make one with `sluice secret-key`) "
                         "so they travel encrypted; nothing was sent")
        self.task_name = task_name


class UnknownTask(UsageError):
    """No task is registered under that name."""

    def __init__(self, name: str, known: list[str] | None = None) -> None:
        hint = f" (known tasks: {', '.join(sorted(known))})" if known else ""
        super().__init__(f"unknown task {name!r}{hint}")
        self.task_name = name
        self.known = known

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across Celery's pool processes
        return (type(self), (self.task_name, self.known))


class UnknownPriority(UsageError, ValueError):
    """Not a priority: use CRITICAL, HIGH, NORMAL or LOW."""


class InvalidPayload(UsageError):
    """The payload does not match the task's payload model; nothing was enqueued."""

    def __init__(self, task_name: str, errors: list[dict[str, Any]]) -> None:
        self.task_name = task_name
        self.errors = errors
        fields = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        super().__init__(f"invalid payload for {task_name!r}: {fields}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.task_name, self.errors))

    @property
    def fields(self) -> list[str]:
        """The names of the bad fields, in the order pydantic reported them."""
        return [e["field"] for e in self.errors]


class Rejected(SluiceError):
    """The gate refused the submission; retry after `retry_after_s` seconds."""

    def __init__(self, reason: str, level: Any, priority: Any, retry_after_s: float,
                 task_name: str = "") -> None:
        self.reason = reason
        self.level = level
        self.priority = priority
        self.retry_after_s = retry_after_s
        self.task_name = task_name
        level_name = getattr(level, "name", level)
        prio_name = getattr(priority, "name", priority)
        super().__init__(
            f"{task_name or 'job'} rejected: {reason} (level {level_name}, priority {prio_name}, "
            f"retry after {retry_after_s:g}s)"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.reason, self.level, self.priority, self.retry_after_s,
                             self.task_name))


class BrokerUnavailable(Unavailable):
    """Redis cannot be reached."""


class DatabaseUnavailable(Unavailable):
    """The database cannot be reached."""


class PendingMigrations(SluiceError):
    """The database schema is behind the code: run `sluice db upgrade`."""


class NotFound(SluiceError):
    """No such record."""


class ReplayRefused(SluiceError):
    """This dead letter cannot be replayed in its current status."""


class PermanentError(SluiceError):
    """A failure that retrying cannot fix: the job goes straight to the dead-letter store."""


class InvalidOption(UsageError, ValueError):
    """A submission option (countdown, expiry, ...) is out of range; nothing was enqueued."""


class OutcomeUnknown(Unavailable):
    """Redis did not answer and the job could not be kept anywhere else: it may or may not
    be queued (at most once: it can never be queued twice under its task id)."""

    def __init__(self, task_id: str, task_name: str = "", detail: str = "") -> None:
        self.task_id = task_id
        self.task_name = task_name
        self.detail = detail
        super().__init__(
            f"{task_name or 'job'} {task_id}: Redis did not answer ({detail or 'timeout'}) "
            "and the outbox is unavailable: the job may or may not be queued, never twice. "
            "Resubmit with the same idempotency_key to be sure it runs once.")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.task_id, self.task_name, self.detail))


class InvalidWorkflow(UsageError):
    """The workflow is invalid (an unknown task, a bad payload or merge); nothing was
    submitted. `problems` names each one by step."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid workflow: " + "; ".join(problems))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.problems,))


class InvalidSchedules(ConfigError):
    """The application schedules file (SLUICE_SCHEDULES_FILE) is invalid: beat does not
    start. `problems` names each schedule and what is wrong with it."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        super().__init__(f"invalid schedules file {path}: " + "; ".join(problems))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.problems))


class StepShed(SluiceError):
    """The gate shed a workflow step that was due: it waits and is tried again later."""
