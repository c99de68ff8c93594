"""The producer API: validate, pass the gate, send. `submit`, `submit_many`, `submit_async`.

A submission is planned in memory (task lookup, payload validation, kill switches, the gate's
decision on the monitor's latest snapshot), then sent with one LPUSH, or a batch with one
pipeline. The only extra round trip is the idempotency claim, and only when a key is given.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
from celery import Celery
from kombu.utils.uuid import uuid
from pydantic import BaseModel, SecretBytes, SecretStr, ValidationError
from sqlalchemy.exc import SQLAlchemyError

from producers import killswitch, ledger
from producers.monitor import PressureEvent, PressureMonitor
from producers.outbox import OutboxEntry, add_to_outbox, flush_outbox
from producers.pressure import BROKER_UNAVAILABLE, KILL_SWITCH, Decision, Thresholds, decide
from producers.wire import encode
from sluice import keys
from sluice.errors import InvalidPayload, Rejected, UnknownTask
from sluice.priorities import PressureLevel, Priority
from sluice.settings import Settings

__all__ = ["Receipt", "Plan", "Producer", "task_for", "validate_payload", "mask_secrets",
           "SECRET"]

log = logging.getLogger("sluice.producer")

#: Header names carried by every Sluice message (read by the worker's task base).
H_KEY, H_SUBMITTED, H_PRIORITY = "sluice_key", "sluice_submitted_at", "sluice_priority"
#: On a replayed dead letter: the original task id, so a new failure updates the same row.
H_ORIGIN = "sluice_origin"


@dataclass(frozen=True, slots=True)
class Receipt:
    """What an accepted submission returns."""

    task_id: str
    queue: str
    level: PressureLevel
    delayed_ms: int = 0
    duplicate: bool = False
    outboxed: bool = False
    task_name: str = ""
    priority: Priority = Priority.NORMAL


@dataclass(frozen=True, slots=True)
class Plan:
    """A validated submission that the gate let through, not yet sent."""

    task_name: str
    payload: Any
    priority: Priority
    level: PressureLevel
    decision: Decision
    key: str | None
    expires: float | None
    countdown: float | None
    task_id: str = field(default_factory=uuid)
    origin: str | None = None
    printable: str | None = None  # argsrepr with secrets masked

    def headers(self) -> dict[str, Any]:
        return {H_KEY: self.key, H_SUBMITTED: time.time(), H_PRIORITY: self.priority.name,
                H_ORIGIN: self.origin}


def task_for(app: Celery, name: str) -> Any:
    """The registered Sluice task `name`; UnknownTask when there is none."""
    task = app.tasks.get(name)
    if task is None:
        app.loader.import_default_modules()
        task = app.tasks.get(name)
    if task is None or getattr(task, "payload_model", None) is None:
        known = [n for n, t in app.tasks.items() if getattr(t, "payload_model", None)]
        raise UnknownTask(name, known)
    return task


def validate_payload(task_name: str, model: type[BaseModel], payload: Any) -> BaseModel:
    """The payload as `model`; InvalidPayload listing every bad field otherwise. The error
    names fields and problems but never echoes the values (they may be secrets)."""
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        errors = [{"field": ".".join(str(p) for p in e["loc"]) or "(payload)",
                   "message": e["msg"], "type": e["type"]}
                  for e in exc.errors(include_input=False, include_url=False)]
        raise InvalidPayload(task_name, errors) from None


#: Mark a payload field secret with `Field(json_schema_extra=SECRET)` (or type it SecretStr).
SECRET = {"secret": True}
MASK = "***"


def mask_secrets(model: type[BaseModel], payload: Any) -> Any:
    """A copy of `payload` with every field the model marks secret replaced by `***`
    (for dead-letter rows and the message's printable `argsrepr`)."""
    secret = _secret_fields(model)
    if not secret or not isinstance(payload, dict) or not secret & payload.keys():
        return payload
    return {k: MASK if k in secret else v for k, v in payload.items()}


@functools.cache
def _secret_fields(model: type[BaseModel]) -> frozenset[str]:
    """Names (and aliases) of the fields of `model` marked secret."""
    names: set[str] = set()
    for name, info in model.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if info.annotation in _SECRET_TYPES or extra.get("secret"):
            names |= {name, info.alias or name}
    return frozenset(names)


_SECRET_TYPES = (SecretStr, SecretBytes, SecretStr | None, SecretBytes | None)


class Producer:
    """Submits jobs through the gate. One per process is enough (see `producers.default`)."""

    def __init__(self, app: Celery, settings: Settings, client: redis.Redis,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.app = app
        self.settings = settings
        self.client = client
        self.sleep = sleep
        self.monitor = PressureMonitor(client, Thresholds(
            settings.pressure_warning, settings.pressure_critical, settings.pressure_shed,
            settings.pressure_margin, settings.pressure_dwell), settings.pressure_interval)
        self.monitor.hooks.append(self._on_pressure_change)
        self._start_lock = threading.Lock()
        self._broker_was_down = False

    def start(self) -> None:
        """Start the pressure monitor (done on first use)."""
        with self._start_lock:
            self.monitor.start()

    def close(self) -> None:
        """Stop the monitor and flush counters."""
        self.monitor.stop()

    # -- the public operations ---------------------------------------------------------

    def submit(self, task_name: str, payload: Any, *, priority: Priority | str | None = None,
               idempotency_key: str | None = None, countdown: float | None = None,
               expires: float | None = None) -> Receipt:
        """Submit one job; raises Rejected, InvalidPayload or UnknownTask."""
        plan = self.plan(task_name, payload, priority, idempotency_key, expires, countdown)
        return self.execute(plan)

    def execute(self, plan: Plan) -> Receipt:
        """Send a planned submission: idempotency claim, the gate's delay, then the LPUSH."""
        first = self._claim(plan)
        if first is not None:
            return self._duplicate(plan, first)
        if plan.decision.delay_ms:
            self.sleep(plan.decision.delay_ms / 1000)
        return self._send_or_release(plan)

    def _send_or_release(self, plan: Plan) -> Receipt:
        """Send; if the job could not be sent, give its idempotency key back (best effort),
        so that a retry with the same key is not taken for a duplicate."""
        try:
            return self._send(plan)
        except Rejected:
            if plan.key is not None:
                self._release(plan.key, plan.task_id)
            raise

    def _release(self, key: str, task_id: str) -> None:
        try:
            name = keys.idempotency(key)
            if self.client.get(name) == task_id.encode():
                self.client.delete(name)
        except redis.RedisError:
            log.warning("idempotency key %r stays claimed for a job that was not sent", key)

    def submit_many(self, task_name: str, payloads: Sequence[Any], *,
                    priority: Priority | str | None = None,
                    expires: float | None = None) -> list[Receipt | Rejected]:
        """Submit a batch in one pipeline; a Receipt or a Rejected per item, in order.

        Every payload is validated first: one invalid payload raises InvalidPayload (naming
        the item) and nothing is enqueued. A shed item never raises.
        """
        plans: list[Plan | Rejected] = []
        for index, payload in enumerate(payloads):
            try:
                plans.append(self.plan(task_name, payload, priority, None, expires, None))
            except Rejected as rej:
                plans.append(rej)
            except InvalidPayload as exc:
                raise InvalidPayload(task_name, [dict(e, field=f"[{index}].{e['field']}")
                                                 for e in exc.errors]) from None
        accepted = [p for p in plans if isinstance(p, Plan)]
        delay = max((p.decision.delay_ms for p in accepted), default=0)
        if delay:
            self.sleep(delay / 1000)
        sent = iter(self._send_batch(accepted))
        return [next(sent) if isinstance(p, Plan) else p for p in plans]

    async def submit_async(self, task_name: str, payload: Any, *,
                           priority: Priority | str | None = None,
                           idempotency_key: str | None = None, countdown: float | None = None,
                           expires: float | None = None) -> Receipt:
        """`submit` for asyncio: the delay is awaited, the I/O runs in a worker thread."""
        plan = self.plan(task_name, payload, priority, idempotency_key, expires, countdown)
        first = await asyncio.to_thread(self._claim, plan)
        if first is not None:
            return self._duplicate(plan, first)
        if plan.decision.delay_ms:
            await asyncio.sleep(plan.decision.delay_ms / 1000)
        return await asyncio.to_thread(self._send_or_release, plan)

    # -- planning (in memory) ----------------------------------------------------------

    def plan(self, task_name: str, payload: Any, priority: Priority | str | None,
             key: str | None = None, expires: float | None = None,
             countdown: float | None = None, origin: str | None = None) -> Plan:
        """Validate and pass the gate without any I/O; raises Rejected when shed."""
        task = task_for(self.app, task_name)
        prio = Priority.parse(priority) if priority is not None else task.sluice_priority
        validate_payload(task_name, task.payload_model, payload)
        if not self.monitor.running:
            self.start()
        snap = self.monitor.snapshot
        blocked = killswitch.blocking_switch(snap.killswitches, task_name, prio)
        if blocked is not None:
            self.monitor.count(f"{prio.name}:killed")
            raise Rejected(KILL_SWITCH, snap.level, prio, 30.0, task_name)
        decision = decide(snap.level, prio)
        if not decision.allowed:
            self.monitor.count(f"{prio.name}:shed")
            raise Rejected(decision.reason or "", snap.level, prio, decision.retry_after_s,
                           task_name)
        if expires is None:
            expires = self.settings.expires_for(prio)
        return Plan(task_name, payload, prio, snap.level, decision, key, expires, countdown,
                     origin=origin, printable=repr([mask_secrets(task.payload_model, payload)]))

    # -- I/O ---------------------------------------------------------------------------

    def _claim(self, plan: Plan) -> str | None:
        """Claim the idempotency key; returns the first task id if it was already taken."""
        if plan.key is None or plan.level is PressureLevel.UNKNOWN:
            return None
        name = keys.idempotency(plan.key)
        try:
            if self.client.set(name, plan.task_id, nx=True, ex=self.settings.idempotency_ttl):
                return None
            first = self.client.get(name)
        except redis.RedisError:
            return None  # the send will fail too and take the broker-down path
        return first.decode() if first else None

    def _duplicate(self, plan: Plan, first: str) -> Receipt:
        self.monitor.count(f"{plan.priority.name}:duplicate")
        return Receipt(first, plan.priority.queue, plan.level, 0, True, False, plan.task_name,
                       plan.priority)

    def _message(self, plan: Plan) -> str:
        return encode(self.app, plan.task_id, plan.task_name, plan.payload, plan.priority.queue,
                      plan.headers(), plan.expires, plan.countdown, plan.printable)

    def _send(self, plan: Plan) -> Receipt:
        if plan.level is PressureLevel.UNKNOWN:
            return self._outbox(plan)
        try:
            self._push([plan])
        except redis.RedisError:
            return self._broker_down(plan)
        return self._accepted(plan)

    def _push(self, plans: list[Plan]) -> None:
        """LPUSH each message and write them all to the ledger: one pipeline."""
        pipe = self.client.pipeline(transaction=False)
        sent = []
        for plan in plans:
            message = self._message(plan)
            pipe.lpush(plan.priority.queue, message)
            sent.append((plan.task_id, plan.priority.queue, message))
        ledger.record(pipe, sent, time.time())
        pipe.execute()

    def _send_batch(self, plans: list[Plan]) -> list[Receipt | Rejected]:
        if not plans:
            return []
        if plans[0].level is PressureLevel.UNKNOWN:  # one snapshot level for the batch
            return [self._broker_down_item(p) for p in plans]
        try:
            self._push(plans)
        except redis.RedisError:
            return [self._broker_down_item(p) for p in plans]
        return [self._accepted(p) for p in plans]

    def _accepted(self, plan: Plan) -> Receipt:
        outcome = "delayed" if plan.decision.delay_ms else "accepted"
        self.monitor.count(f"{plan.priority.name}:{outcome}")
        return Receipt(plan.task_id, plan.priority.queue, plan.level, plan.decision.delay_ms,
                       False, False, plan.task_name, plan.priority)

    def _broker_down_item(self, plan: Plan) -> Receipt | Rejected:
        try:
            return self._broker_down(plan)
        except Rejected as rej:
            return rej

    def _broker_down(self, plan: Plan) -> Receipt:
        """Redis failed under us: CRITICAL goes to the outbox, anything else is refused."""
        if plan.priority is Priority.CRITICAL:
            return self._outbox(plan)
        self.monitor.count(f"{plan.priority.name}:shed")
        raise Rejected(BROKER_UNAVAILABLE, PressureLevel.UNKNOWN, plan.priority, 5.0,
                       plan.task_name)

    def _outbox(self, plan: Plan) -> Receipt:
        try:
            add_to_outbox(plan.task_id, plan.task_name, plan.priority.queue, plan.payload,
                          plan.headers())
        except SQLAlchemyError as exc:
            log.error("CRITICAL job %s could not be stored in the outbox: %s", plan.task_id, exc)
            raise Rejected(BROKER_UNAVAILABLE, PressureLevel.UNKNOWN, plan.priority, 5.0,
                           plan.task_name) from exc
        log.warning("Redis unreachable: CRITICAL %s %s kept in the outbox", plan.task_name,
                    plan.task_id)
        self._broker_was_down = True  # flush when the monitor sees Redis again
        self.monitor.count(f"{plan.priority.name}:outboxed")
        return Receipt(plan.task_id, plan.priority.queue, PressureLevel.UNKNOWN, 0, False,
                       True, plan.task_name, plan.priority)

    # -- outbox ------------------------------------------------------------------------

    def send_outboxed(self, entry: OutboxEntry) -> None:
        """Send one outbox entry with its original task id (used by `flush_outbox`)."""
        message = encode(self.app, entry.task_id, entry.task_name, entry.payload, entry.queue,
                         dict(entry.headers or {}))
        pipe = self.client.pipeline(transaction=False)
        pipe.lpush(entry.queue, message)
        ledger.record(pipe, [(entry.task_id, entry.queue, message)], time.time())
        pipe.execute()

    def flush_outbox(self) -> int:
        """Send every CRITICAL job waiting in the outbox; returns how many."""
        return flush_outbox(self.send_outboxed)

    def _on_pressure_change(self, event: PressureEvent) -> None:
        if event.new is PressureLevel.UNKNOWN:
            self._broker_was_down = True
        elif self._broker_was_down:
            self._broker_was_down = False
            try:
                self.flush_outbox()
            except SQLAlchemyError as exc:
                log.warning("outbox flush deferred to reconcile: %s", type(exc).__name__)
