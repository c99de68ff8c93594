"""The producer API: validate, pass the gate, send. `submit`, `submit_many`, `submit_async`.

A submission is planned in memory (task lookup, payload validation, kill switches, the gate's
decision on the monitor's latest snapshot), then sent with one atomic script call
(`delivery.sending`: idempotency claim, LPUSH and ledger together), or a batch with one
pipeline. A send whose outcome is unknown (Redis stalled) is settled by a fence before the
caller gets an answer, so a receipt or a rejection is always the truth.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import redis
from celery import Celery
from sqlalchemy.exc import SQLAlchemyError

from delivery.outbox import OutboxEntry, add_to_outbox, flush_outbox
from delivery.sending import Outcome, Outgoing, Sent, fence, is_not_sent, send_many
from producers import killswitch
from producers.deadline import admit
from producers.fairness import TENANT_QUOTA, share_capacity, tenant_quota, under_pressure
from producers.monitor import PressureEvent, PressureMonitor, Snapshot
from producers.plan import Plan, Receipt, check_countdown, task_for, tenant_of
from producers.pressure import BROKER_UNAVAILABLE, KILL_SWITCH, Decision, Thresholds
from producers.wire import encode
from sluice.errors import (
    InvalidOption,
    InvalidPayload,
    OutcomeUnknown,
    Rejected,
    SecretKeyMissing,
)
from sluice.keys import SubmitOutcome, submission_field
from sluice.message import SECRET, mask_secrets, validate_payload
from sluice.priorities import PressureLevel, Priority
from sluice.sealed import can_seal, carries_secrets, seal_secrets
from sluice.settings import Settings

__all__ = ["Receipt", "Plan", "Producer", "task_for", "validate_payload", "mask_secrets",
           "SECRET"]

log = logging.getLogger("sluice.producer")

#: outbox-only header: the idempotency key to claim when the job is finally sent
_IDEM = "_sluice_idempotency_key"


class Producer:
    """Submits jobs through the gate. One per process is enough (see `producers.default`)."""

    def __init__(self, app: Celery, settings: Settings, client: redis.Redis,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.app = app
        self.settings = settings
        self.client = client
        self.sleep = sleep
        self.monitor = PressureMonitor(client, Thresholds.from_settings(settings),
                                       settings.pressure_interval)
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
               deadline: float | None = None, tenant: str | None = None,
               headers: Mapping[str, Any] | None = None) -> Receipt:
        """Submit one job; raises Rejected, InvalidPayload, InvalidOption or UnknownTask.
        `deadline`: seconds the job may wait before it starts (default: the task's, else
        the priority's `SLUICE_MAX_WAIT_*`). `tenant`: whose job it is (default: the
        task's tenant field, else `default`). `headers`: extra message headers (JSON)."""
        plan = self.plan(task_name, payload, priority, key=idempotency_key, deadline=deadline,
                         countdown=countdown, tenant=tenant, headers=headers)
        return self.execute(plan)

    def execute(self, plan: Plan) -> Receipt:
        """Send a planned submission: the gate's delay, then the send. Nothing is claimed
        before the send, so an interrupted submission leaves nothing behind."""
        if plan.decision.delay_ms:
            self.sleep(plan.decision.delay_ms / 1000)
        return self._send(plan)

    def submit_many(self, task_name: str, payloads: Sequence[Any], *,
                    priority: Priority | str | None = None,
                    deadline: float | None = None,
                    tenant: str | None = None) -> list[Receipt | Rejected]:
        """Submit a batch in one pipeline; a Receipt or a Rejected per item, in order.

        Every payload is validated first: one invalid payload raises InvalidPayload (naming
        the item) and nothing is enqueued. A shed item never raises.
        """
        plans: list[Plan | Rejected] = []
        for index, payload in enumerate(payloads):
            try:
                plans.append(self.plan(task_name, payload, priority, deadline=deadline,
                                       tenant=tenant))
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
                           deadline: float | None = None, tenant: str | None = None,
                           headers: Mapping[str, Any] | None = None) -> Receipt:
        """`submit` for asyncio: the delay is awaited, the I/O runs in a worker thread.
        Cancelled during the delay, it has sent and claimed nothing."""
        plan = self.plan(task_name, payload, priority, key=idempotency_key, deadline=deadline,
                         countdown=countdown, tenant=tenant, headers=headers)
        if plan.decision.delay_ms:
            await asyncio.sleep(plan.decision.delay_ms / 1000)
        return await asyncio.to_thread(self._send, plan)

    # -- planning (in memory) ----------------------------------------------------------

    def plan(self, task_name: str, payload: Any, priority: Priority | str | None, *,
             key: str | None = None, deadline: float | None = None,
             countdown: float | None = None, origin: str | None = None,
             effect_key: str | None = None, generation: int = 0, tenant: str | None = None,
             headers: Mapping[str, Any] | None = None) -> Plan:
        """Validate and pass the gate without any I/O; raises Rejected when shed."""
        task = task_for(self.app, task_name)
        prio = Priority.parse(priority) if priority is not None else task.sluice_priority
        validate_payload(task_name, task.payload_model, payload)
        if not can_seal() and carries_secrets(task.payload_model, payload):
            raise SecretKeyMissing(task_name)
        check_countdown(countdown, task, self.settings)
        deadline = self._deadline(deadline, task, prio)
        who = tenant_of(task, payload, tenant)
        snap = self.monitor.current()
        decision = self._gate(snap, task_name, prio, who, deadline, countdown)
        # absolute, from now: the gate's delay and the send do not push the deadline back
        expires = None if deadline is None else (
            dt.datetime.now(dt.UTC) + dt.timedelta(seconds=deadline + (countdown or 0.0)))
        sealed = seal_secrets(task_name, task.payload_model, payload)  # after the gate: cheap
        return Plan(task_name=task_name, payload=sealed, priority=prio, level=snap.level,
                    decision=decision, key=key, expires=expires, countdown=countdown,
                    origin=origin, effect_key=effect_key, generation=generation,
                    tenant=who, extra=dict(headers or {}),
                    printable=repr([mask_secrets(task.payload_model, payload)]))

    def _gate(self, snap: Snapshot, task_name: str, prio: Priority, tenant: str,
              deadline: float | None, countdown: float | None) -> Decision:
        """Kill switches, DESIGN.md's depth table and the deadline, then (under pressure)
        the tenant's fair share. Raises Rejected, counted; no I/O."""
        blocked = killswitch.blocking_switch(snap.killswitches, task_name, prio, tenant)
        if blocked is not None:
            self.monitor.count(submission_field(prio.name, SubmitOutcome.KILLED))
            self.monitor.count_tenant(prio, tenant, accepted=False)
            raise Rejected(KILL_SWITCH, snap.level, prio, 30.0, task_name)
        # a countdown job is not due yet; the others wait behind what is queued, including
        # what this process sent since the last tick
        admitted, now = self.monitor.admitted(), self.monitor.clock()
        wait, breaks = (0.0, None) if countdown else snap.admission(prio, admitted, now)
        decision = admit(snap.level, prio, wait, deadline, breaks)
        if (decision.allowed and prio is not Priority.CRITICAL
                and under_pressure(snap.level, wait, deadline)):
            room = share_capacity(snap.available(prio), wait, deadline)
            decision = tenant_quota(tenant, self.monitor.tenant_rates(prio), room,
                                    self.settings.tenant_weights) or decision
        self.monitor.count_tenant(prio, tenant, accepted=decision.allowed)
        if not decision.allowed:
            outcome = SubmitOutcome.QUOTA if decision.reason == TENANT_QUOTA \
                else SubmitOutcome.SHED
            self.monitor.count(submission_field(prio.name, outcome))
            raise Rejected(decision.reason or "", snap.level, prio, decision.retry_after_s,
                           task_name)
        return decision

    def _deadline(self, deadline: float | None, task: Any, priority: Priority) -> float | None:
        """The submission's deadline, else the task's `max_wait`, else the priority's;
        CRITICAL has none. Out of range: InvalidOption naming it."""
        if priority is Priority.CRITICAL:
            return None
        if deadline is None:
            deadline = getattr(task, "max_wait", None) or self.settings.max_wait_for(priority)
        if deadline is not None and not (math.isfinite(deadline) and deadline > 0):
            raise InvalidOption(f"deadline {deadline!r} for {task.name!r} must be a positive "
                                "number of seconds")
        return deadline

    # -- I/O ---------------------------------------------------------------------------

    def _outgoing(self, plan: Plan) -> Outgoing:
        message = encode(self.app, plan.task_id, plan.task_name, plan.payload,
                         plan.priority.queue, plan.headers(), plan.expires, plan.countdown,
                         plan.printable)
        return Outgoing(task_id=plan.task_id, queue=plan.priority.queue, message=message,
                        idempotency_key=plan.key)

    def _send(self, plan: Plan) -> Receipt:
        if plan.level is PressureLevel.UNKNOWN:
            return self._outbox(plan)
        try:
            [sent] = send_many(self.client, [self._outgoing(plan)],
                               idempotency_ttl=self.settings.idempotency_ttl)
        except redis.RedisError as exc:
            return self._undecided(plan, exc)
        return self._settled(plan, sent)

    def _send_batch(self, plans: list[Plan]) -> list[Receipt | Rejected]:
        if not plans:
            return []
        if plans[0].level is PressureLevel.UNKNOWN:  # one snapshot level for the batch
            return [_or_rejected(self._outbox, p) for p in plans]
        try:
            sent = send_many(self.client, [self._outgoing(p) for p in plans],
                             idempotency_ttl=self.settings.idempotency_ttl)
        except redis.RedisError as exc:
            return [_or_rejected(self._undecided, p, exc) for p in plans]
        return [self._settled(p, s) for p, s in zip(plans, sent, strict=True)]

    def _settled(self, plan: Plan, sent: Sent) -> Receipt:
        if sent.outcome is Outcome.FENCED:  # only a task id reused after a fence
            return self._not_sent(plan)
        if sent.outcome is Outcome.DUPLICATE:
            self.monitor.count(submission_field(plan.priority.name, SubmitOutcome.DUPLICATE))
            return plan.receipt(task_id=sent.first_task_id or "", delayed_ms=0, duplicate=True)
        outcome = SubmitOutcome.DELAYED if plan.decision.delay_ms else SubmitOutcome.ACCEPTED
        self.monitor.count(submission_field(plan.priority.name, outcome))
        self.monitor.admit(plan.priority.queue)
        return plan.receipt()

    def _undecided(self, plan: Plan, exc: redis.RedisError) -> Receipt:
        """The send failed. If it never reached Redis, Redis is down: CRITICAL goes to the
        outbox, anything else is refused. If it may have reached Redis, fence it: then it
        either arrived (accepted) or never will (as if refused)."""
        if not is_not_sent(exc):
            arrived = self._fence(plan.task_id)
            if arrived:
                return self._settled(plan, Sent(outcome=Outcome.SENT))
            if arrived is None:  # still unknown: only the outbox can make it certain
                log.warning("send of %s %s undecided (%s): kept in the outbox", plan.task_name,
                            plan.task_id, type(exc).__name__)
                return self._outbox(plan, undecided=type(exc).__name__)
        return self._not_sent(plan)

    def _not_sent(self, plan: Plan) -> Receipt:
        """Redis is down: CRITICAL goes to the outbox, anything else is refused."""
        if plan.priority is Priority.CRITICAL:
            return self._outbox(plan)
        self.monitor.count(submission_field(plan.priority.name, SubmitOutcome.UNAVAILABLE))
        raise Rejected(BROKER_UNAVAILABLE, PressureLevel.UNKNOWN, plan.priority, 5.0,
                       plan.task_name)

    def _fence(self, task_id: str, attempts: int = 3) -> bool | None:
        """True: the send arrived; False: it did not and never will; None: unknown."""
        for _ in range(attempts):
            try:
                return fence(self.client, task_id)
            except redis.RedisError as exc:
                if is_not_sent(exc):
                    return None
        return None

    def _outbox(self, plan: Plan, undecided: str = "") -> Receipt:
        headers = plan.headers() | ({_IDEM: plan.key} if plan.key else {})
        try:
            add_to_outbox(plan.task_id, plan.task_name, plan.priority.queue, plan.payload,
                          headers)
        except SQLAlchemyError as exc:
            log.error("job %s could not be stored in the outbox: %s", plan.task_id, exc)
            if undecided:
                raise OutcomeUnknown(plan.task_id, plan.task_name, undecided) from exc
            raise Rejected(BROKER_UNAVAILABLE, PressureLevel.UNKNOWN, plan.priority, 5.0,
                           plan.task_name) from exc
        log.warning("Redis unreachable: %s %s %s kept in the outbox", plan.priority.name,
                    plan.task_name, plan.task_id)
        self._broker_was_down = True  # flush when the monitor sees Redis again
        self.monitor.count(submission_field(plan.priority.name, SubmitOutcome.OUTBOXED))
        return plan.receipt(level=PressureLevel.UNKNOWN, outboxed=True)

    # -- outbox ------------------------------------------------------------------------

    def send_outboxed(self, entry: OutboxEntry) -> None:
        """Send one outbox entry with its original task id (used by `flush_outbox`), unless
        the ledger shows that its first send did arrive."""
        headers = dict(entry.headers or {})
        key = headers.pop(_IDEM, None)
        message = encode(self.app, entry.task_id, entry.task_name, entry.payload, entry.queue,
                         headers)
        send_many(self.client, [Outgoing(task_id=entry.task_id, queue=entry.queue,
                                         message=message, idempotency_key=key)],
                  idempotency_ttl=self.settings.idempotency_ttl, flush=True)

    def flush_outbox(self) -> int:
        """Send every job waiting in the outbox; returns how many."""
        return flush_outbox(self.send_outboxed)

    def _on_pressure_change(self, event: PressureEvent) -> None:
        if event.new is PressureLevel.UNKNOWN:
            self._broker_was_down = True
        elif self._broker_was_down:
            self._broker_was_down = False
            try:
                self.flush_outbox()
            except (SQLAlchemyError, redis.RedisError) as exc:
                log.warning("outbox flush deferred to reconcile: %s", type(exc).__name__)


def _or_rejected(send: Callable[..., Receipt], plan: Plan, *args: Any) -> Receipt | Rejected:
    try:
        return send(plan, *args)
    except Rejected as rej:
        return rej
