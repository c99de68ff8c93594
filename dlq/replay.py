"""Replay dead letters back to their queue, through the gate.

A replay runs the original job: the payload it was submitted with (unsealed when the row
holds only a masked copy), and the same effect key, so that an effect applied before the
failure is not applied again. It gets a new task id and carries the original one
(`origin`) and its generation, so that a new failure updates the same row.

A dead-lettered workflow step is replayed as that step (the workflow headers go with it),
so the workflow resumes from there when it succeeds.

A replay claims the row (UPDATE ... WHERE status is replayable, which takes the row lock),
sends the job, and commits. A second replay of the same row finds it
already `replayed` and is refused; a failed send rolls the claim back; a replay shed by the
gate leaves the row `pending` with the rejection in `reason`.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, cast

import redis
from sqlalchemy import CursorResult, update

from dlq.models import DeadLetter, Status
from dlq.store import DeadLetterStore
from producers import workflow
from producers.api import Producer, task_for
from sluice.errors import ConfigError, Rejected, ReplayRefused, SluiceError
from sluice.message import MASK, secret_fields
from sluice.priorities import Priority
from sluice.sealed import unseal, unseal_secrets

__all__ = ["ReplayResult", "ReplayOutcome", "replay_one", "replay_many", "original_payload", "REPLAYABLE"]

log = logging.getLogger("sluice.dlq.replay")

REPLAYABLE = (Status.PENDING.value, Status.EXHAUSTED.value)


class ReplayResult(enum.StrEnum):
    """What a replay did to one row."""

    REPLAYED = "replayed"  #: sent through the gate; the row is `replayed`
    REJECTED = "rejected"  #: shed by the gate; the row stays as it was, the reason noted
    REFUSED = "refused"  #: its status (or a masked secret without a sealed copy) forbids it
    ERROR = "error"  #: another Sluice error (an unknown task, an invalid payload, ...)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplayOutcome:
    """What happened to one row, with the new task id or the reason."""

    id: int
    outcome: ReplayResult
    task_id: str | None = None
    reason: str | None = None


def replay_one(store: DeadLetterStore, producer: Producer, dead_letter_id: int,
               next_retry_at: dt.datetime | None = None) -> ReplayOutcome:
    """Replay one row through the gate. Raises ReplayRefused if its status forbids it."""
    row = store.get(dead_letter_id)
    if row.status not in REPLAYABLE:
        raise ReplayRefused(f"dead letter {row.id} is {row.status}: only pending or exhausted "
                            "rows can be replayed")
    payload = original_payload(producer, row)
    step = _workflow_step(row)
    try:
        plan = producer.plan(row.task_name, payload, Priority.parse(row.priority),
                             origin=row.task_id, effect_key=row.effect_key or row.task_id,
                             generation=row.replay_count + 1, tenant=row.tenant,
                             headers=workflow.workflow_headers(step) if step else None)
    except Rejected as rej:
        _note_rejection(store, row, rej, next_retry_at)
        return ReplayOutcome(id=row.id, outcome=ReplayResult.REJECTED, reason=rej.reason)
    with store.session() as session, session.begin():
        claimed = cast(CursorResult[Any], session.execute(
            update(DeadLetter).where(DeadLetter.id == row.id)
            .where(DeadLetter.status.in_(REPLAYABLE))
            .values(status=Status.REPLAYED.value, replayed_task_id=plan.task_id,
                    replay_count=DeadLetter.replay_count + 1, next_retry_at=next_retry_at,
                    updated_at=dt.datetime.now(dt.UTC)))).rowcount
        if not claimed:
            raise ReplayRefused(f"dead letter {row.id} was replayed concurrently")
        producer.execute(plan)  # raises -> the claim rolls back
    log.info("dead letter %s (%s) replayed as %s", row.id, row.task_name, plan.task_id)
    if step is not None:
        _note_step_replayed(producer, step, plan.task_id, plan.priority.queue, row.id)
    return ReplayOutcome(id=row.id, outcome=ReplayResult.REPLAYED, task_id=plan.task_id)


def _workflow_step(row: DeadLetter) -> workflow.StepRef | None:
    """The workflow step a row is, to be replayed as (not the internal task that submits a
    step later: replayed, it submits the step, which carries the headers itself)."""
    if row.task_name == workflow.ADVANCE_TASK or not isinstance(row.workflow, dict):
        return None
    try:
        return workflow.StepRef(str(row.workflow["id"]), int(row.workflow["step"]))
    except (KeyError, TypeError, ValueError):
        log.warning("dead letter %s: unreadable workflow %r, replayed as a lone job", row.id,
                    row.workflow)
        return None


def _note_step_replayed(producer: Producer, step: workflow.StepRef, task_id: str, queue: str,
                        dead_letter_id: int) -> None:
    """Best effort: `sluice workflow show` then says the step is queued again (the replay is
    sent either way, and its success resumes the workflow)."""
    try:
        workflow.note_replayed(producer.client, step, task_id, queue, dead_letter_id,
                               time.time())
    except redis.RedisError as exc:
        log.warning("workflow %s step %d: replay not noted (%s)", step.workflow, step.step,
                    type(exc).__name__)


def original_payload(producer: Producer, row: DeadLetter) -> Any:
    """The payload the job was submitted with. ReplayRefused when the row holds secrets only
    masked (`***`) and no sealed copy: sending `***` as a password is not a replay."""
    model = task_for(producer.app, row.task_name).payload_model
    if row.sealed:
        try:  # the payload as it travelled (secrets sealed), or an older whole-payload token
            if row.sealed.startswith(("{", "[")):
                return unseal_secrets(model, json.loads(row.sealed))
            return unseal(row.sealed)
        except ConfigError as exc:
            raise ReplayRefused(f"dead letter {row.id}: {exc}") from None
    payload = row.payload if isinstance(row.payload, dict) else {}
    masked = sorted(f for f in secret_fields(model) & payload.keys() if payload[f] == MASK)
    if masked:
        raise ReplayRefused(
            f"dead letter {row.id} ({row.task_name}) has its secret field(s) "
            f"{', '.join(masked)} masked and no sealed copy of the original payload: a replay "
            "would send '***'. Workers seal payloads only when SLUICE_SECRET_KEY is set; "
            "resubmit this job by hand with its real values")
    return row.payload


def _note_rejection(store: DeadLetterStore, row: DeadLetter, rej: Rejected,
                    next_retry_at: dt.datetime | None) -> None:
    original = row.reason.split(" (replay ")[0]
    reason = f"{original} (replay {rej.reason})" if original else rej.reason
    values: dict[str, object] = {"reason": reason}
    if next_retry_at is not None:
        values["next_retry_at"] = next_retry_at
    store.set_status([row.id], Status(row.status), only_from=(Status(row.status),), **values)


def replay_many(store: DeadLetterStore, producer: Producer, ids: Iterable[int],
                progress: Callable[[ReplayOutcome], None] | None = None) -> Counter[str]:
    """Replay each id; counts outcomes (`replayed`, `rejected`, `refused`, `error`)."""
    counts: Counter[str] = Counter()
    for dead_letter_id in ids:
        try:
            outcome = replay_one(store, producer, dead_letter_id)
        except ReplayRefused as exc:
            outcome = ReplayOutcome(id=dead_letter_id, outcome=ReplayResult.REFUSED, reason=str(exc))
        except SluiceError as exc:
            outcome = ReplayOutcome(id=dead_letter_id, outcome=ReplayResult.ERROR, reason=str(exc))
        counts[outcome.outcome] += 1
        if progress is not None:
            progress(outcome)
    return counts
