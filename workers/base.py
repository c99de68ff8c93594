"""The task base class every Sluice task uses, and the `sluice_task` decorator.

Retries are Celery's own (`autoretry_for`, `retry_backoff`, `retry_jitter`); this class only
adds what Celery lacks: payload validation, at-most-once effects for keyed jobs, and the
hand-off of the final failure to the dead-letter store.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, TypeVar

from celery import Task
from celery.app.task import Context
from celery.worker.request import Request
from pydantic import BaseModel

from dlq.recorder import get_recorder
from sluice import keys
from sluice.app import app
from sluice.connections import redis_client
from sluice.errors import ConfigError, PermanentError
from sluice.message import (
    H_GENERATION,
    H_KEY,
    H_ORIGIN,
    H_PRIORITY,
    H_TENANT,
    mask_secrets,
    validate_payload,
)
from sluice.priorities import Priority
from sluice.records import DeadLetterRecord
from sluice.sealed import seal_secrets, unseal_secrets
from sluice.settings import get_settings
from workers.policy import failure_reason, policy_for

__all__ = ["SluiceTask", "SluiceRequest", "sluice_task"]

log = logging.getLogger("sluice.worker")
F = TypeVar("F", bound=Callable[..., Any])

#: the request whose hard time limit Celery is handling right now (worker main process)
_TIMED_OUT: ContextVar[Request | None] = ContextVar("sluice_timed_out", default=None)


class SluiceRequest(Request):
    """Celery's worker-side request, telling `on_failure` whose hard time limit fired.

    Celery handles a hard time limit in the worker's main process, where it calls the
    task's `on_failure` directly: `task.request` there is no job's request (no priority,
    origin or key headers), so the dead letter would get the task's defaults instead."""

    def on_timeout(self, soft: bool, timeout: float) -> None:
        token = _TIMED_OUT.set(self)
        try:
            super().on_timeout(soft, timeout)
        finally:
            _TIMED_OUT.reset(token)


def job_effect_key(request: Any) -> str:
    """What a job's side effects are keyed by: its `H_KEY` header (the idempotency key, or
    the key a replay inherited), else the original task id of a replay, else its task id."""
    return (getattr(request, H_KEY, None) or getattr(request, H_ORIGIN, None)
            or getattr(request, "id", None) or "")


class SluiceTask(Task):
    """Validates the payload, skips completed keyed jobs, dead-letters the final failure."""

    abstract = True
    sluice_priority: Priority = Priority.NORMAL
    payload_model: type[BaseModel] | None = None
    max_wait: float | None = None  #: seconds a job may wait before it starts (None: default)
    tenant_field: str | None = None  #: the payload field naming the job's tenant, if any
    Request = "workers.base:SluiceRequest"

    def apply_async(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        """Celery's, with the printable arguments masked. Every message Celery sends for a
        Sluice task passes here, retries included: `Task.retry` does not carry the first
        message's masked `argsrepr` over and would rebuild it with the secrets in clear."""
        if self.payload_model is not None:
            if options.get("argsrepr") is None and args:
                options["argsrepr"] = repr([mask_secrets(self.payload_model, a)
                                            for a in args])
            if options.get("kwargsrepr") is None and kwargs:
                options["kwargsrepr"] = repr(mask_secrets(self.payload_model, kwargs))
        return super().apply_async(args, kwargs, **options)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raw = args[0] if args else kwargs
        assert self.payload_model is not None
        try:  # the secrets travel sealed and are opened here only, in this process
            raw = unseal_secrets(self.payload_model, raw)
        except ConfigError as exc:  # no key, or not the one it was sealed with: no retry helps
            raise PermanentError(str(exc)) from None
        payload = validate_payload(self.name, self.payload_model, raw)  # permanent if invalid
        key = getattr(self.request, H_KEY, None)
        if key and redis_client().exists(keys.done(key)):
            log.info("%s %s skipped: idempotency key %r already completed",
                     self.name, self.request.id, key)
            return None
        result = self.run(payload)
        if key:  # recorded before the ack (acks_late): a redelivery is skipped
            redis_client().set(keys.done(key), self.request.id or "",
                               ex=get_settings().idempotency_ttl)
        return result

    @property
    def effect_key(self) -> str:
        """What a side effect is deduplicated by (`job_effect_key`).

        Redeliveries keep the task id and replays keep the key, so an effect written to a
        sink that is idempotent by this key (a unique constraint, `effects.put`) is applied
        once, whatever the timing of a crash or a replay."""
        return job_effect_key(self.request)

    def _failed_request(self, task_id: str) -> Any:
        """The failed job's request: `self.request`, except under a hard time limit."""
        timed_out = _TIMED_OUT.get()
        if timed_out is not None and timed_out.id == task_id:
            return Context(timed_out.request_dict)
        return self.request

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any,
                   einfo: Any) -> None:
        """The job failed for good: hand it to the dead-letter store (or its spool)."""
        reason, retryable = failure_reason(exc)
        request = self._failed_request(task_id)
        raw = args[0] if args else kwargs
        masked = mask_secrets(self.payload_model, raw) if self.payload_model else raw
        priority = self._priority(request)
        now = time.time()
        record = DeadLetterRecord(
            task_id=getattr(request, H_ORIGIN, None) or task_id, task_name=self.name,
            queue=priority.queue, priority=priority.name,
            payload=masked, exc_type=type(exc).__name__, exc_message=str(exc)[:10_000],
            traceback=str(einfo.traceback if einfo else "")[:50_000],
            attempts=(request.retries or 0) + 1, first_failed_at=now, last_failed_at=now,
            reason=reason, retryable=retryable,
            sealed=self._sealed_copy(raw) if masked != raw else None,
            effect_key=job_effect_key(request) or task_id,
            generation=_int(getattr(request, H_GENERATION, 0)),
            tenant=_text(getattr(request, H_TENANT, None)))
        where = get_recorder().record(record)
        log.error("%s %s dead-lettered (%s, %s, %d attempt(s)) -> %s", self.name, task_id,
                  reason, type(exc).__name__, record.attempts, where)
        from workers.hooks import release  # (hooks imports the tasks built on this module)

        release(task_id, self.name, "dead-lettered")  # kept until now: see `count_start`

    def _sealed_copy(self, raw: Any) -> str | None:
        """The payload as it travelled, secrets sealed (JSON), for a replay; a payload sent
        with secrets in clear (not through `submit`) is sealed here. Without a usable key
        the row keeps the masked payload only: a bad key never costs the dead letter."""
        assert self.payload_model is not None
        try:
            return json.dumps(seal_secrets(self.name, self.payload_model, raw), default=str)
        except ConfigError as exc:
            log.error("%s: payload kept masked only (%s)", self.name, exc)
            return None

    def _priority(self, request: Any) -> Priority:
        """The priority the job was submitted with, else the task's default."""
        try:
            return Priority.parse(getattr(request, H_PRIORITY, None) or self.sluice_priority)
        except ValueError:  # UnknownPriority
            return self.sluice_priority




def _text(value: Any) -> str | None:
    """A header's short text; None when absent or not text (a bad header costs nothing)."""
    return value[:200] if isinstance(value, str) and value else None


def _int(value: Any) -> int:
    """A header's integer; 0 when absent or garbled (a bad header must not cost the record)."""
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def sluice_task(name: str, priority: Priority, payload: type[BaseModel], *,
                max_retries: int | None = None, backoff_s: int | None = None,
                time_limit: int | None = None, soft_time_limit: int | None = None,
                max_wait: float | None = None,
                tenant_field: str | None = None) -> Callable[[F], Any]:
    """Register `fn(payload)` as Sluice task `name` with its default priority and payload
    model. Transient errors retry with exponential backoff and full jitter; `PermanentError`
    and invalid payloads do not retry. `max_wait`: seconds a job may wait before it starts
    (default: its priority's `SLUICE_MAX_WAIT_*`). `tenant_field`: the payload field whose
    value is the job's tenant when the caller names none. A time limit that, with the backoff cap,
    reaches the visibility timeout is refused here, naming the task: such a job would be
    handed out twice while it waits for its retry."""
    settings = get_settings()
    policy = policy_for(priority, settings.retry_backoff_max, max_retries,
                        backoff_s if backoff_s is not None else settings.retry_backoff_base,
                        jitter=settings.retry_jitter)
    hard = time_limit or settings.task_time_limit
    soft = soft_time_limit or min(settings.task_soft_time_limit, hard)
    _check_limits(name, hard, soft, policy.cap_s, settings.visibility_timeout)
    if tenant_field is not None and tenant_field not in payload.model_fields:
        raise ConfigError(f"task {name!r}: tenant_field {tenant_field!r} is not a field of "
                          f"{payload.__name__} ({', '.join(payload.model_fields)})")

    def register(fn: F) -> Any:
        return app.task(
            name=name, base=SluiceTask, sluice_priority=priority, payload_model=payload,
            max_wait=max_wait, tenant_field=tenant_field,
            shared=False,  # registered on the Sluice app only, never on other Celery apps
            autoretry_for=(Exception,),
            dont_autoretry_for=(PermanentError,), max_retries=policy.max_retries,
            retry_backoff=policy.base_s or False, retry_backoff_max=policy.cap_s,
            retry_jitter=policy.jitter, retry_kwargs={} if policy.base_s else {"countdown": 0},
            time_limit=hard, soft_time_limit=soft,
            acks_late=True, reject_on_worker_lost=True)(fn)

    return register


def _check_limits(name: str, hard: int, soft: int, backoff_cap: int, visibility: int) -> None:
    if soft > hard:
        raise ConfigError(f"task {name!r}: soft_time_limit ({soft}s) must not exceed "
                          f"time_limit ({hard}s)")
    if hard + backoff_cap >= visibility:
        raise ConfigError(
            f"task {name!r}: time_limit ({hard}s) + SLUICE_RETRY_BACKOFF_MAX ({backoff_cap}s) "
            f"must be below SLUICE_VISIBILITY_TIMEOUT ({visibility}s), or Redis hands the job "
            "out again while it waits for its retry")
