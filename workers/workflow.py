"""Workflows go on in the worker: when a step succeeds, its successor is submitted.

The `succeeded` hook reads the workflow headers of the job that returned, marks the step
succeeded (keeping the dict it returned, for a `merge`) and submits the next step through the
gate. When the gate sheds that step, it waits: `workflow.advance`, a CRITICAL job (never
shed), tries it again with a growing delay (`shed_backoff`), and gives up after
ADVANCE_RETRIES tries as a dead letter that the dead-letter retry job replays for 24 h more.
Nothing is lost on the way, and `sluice workflow show` says the step is `waiting` and why.

A step that fails for good is named on its dead letter (`dlq.recorder.BEFORE_RECORD`) and
marked `dead-lettered`; replaying the dead letter runs the step again, and its success goes
on from there.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from typing import Any

import redis
from celery import current_task
from pydantic import BaseModel, Field

from dlq.recorder import BEFORE_RECORD
from producers import default_producer
from producers import workflow as wf
from producers.api import Producer
from sluice.connections import redis_client
from sluice.errors import InvalidPayload, NotFound, PermanentError, Rejected, SluiceError, StepShed
from sluice.message import H_ORIGIN, H_WORKFLOW, H_WORKFLOW_STEP
from sluice.priorities import Priority
from sluice.records import MALFORMED_TASK, DeadLetterRecord
from sluice.settings import get_settings
from workers.base import sluice_task
from workers.hooks import HookEvent, ResultDetail, subscribe

__all__ = ["continue_workflow", "step_succeeded", "advance", "advance_task", "shed_backoff",
           "name_workflow_step", "ADVANCE_RETRIES"]

log = logging.getLogger("sluice.workflow")

#: tries of a shed step before `workflow.advance` dead-letters (about 2 h with the default
#: SLUICE_RETRY_BACKOFF_MAX of 600 s); the dead-letter retry job goes on after that
ADVANCE_RETRIES = 20


def shed_backoff(attempt: int, retry_after_s: float, cap_s: float) -> float:
    """Seconds before trying a shed step again, the `attempt`-th time (from 0): 1 s doubling,
    at least what the gate asked for (Retry-After), at most `cap_s`."""
    return float(min(cap_s, max(retry_after_s, 2.0 ** attempt)))


@subscribe(HookEvent.SUCCEEDED)
def continue_workflow(detail: ResultDetail) -> None:
    """A job returned: if it is a workflow step, the workflow goes on."""
    ref = wf.step_ref(detail.request)
    if ref is not None:
        step_succeeded(ref, detail.result, default_producer(), detail.at or time.time())


def step_succeeded(ref: wf.StepRef, result: Any, producer: Producer, now: float) -> str:
    """Mark the step succeeded and submit the next one. Returns what happened: `finished`,
    `submitted`, `waiting` (shed: `workflow.advance` will try again) or `unknown` (no such
    workflow). Any other trouble hands the next step to `workflow.advance` at once."""
    following = wf.StepRef(ref.workflow, ref.step + 1)
    try:
        previous = wf.finish_step(producer.client, ref, result, now)
        workflow = wf.load(producer.client, ref.workflow)
        if ref.step >= len(workflow.steps):
            log.info("workflow %s finished: %d step(s) succeeded", ref.workflow, ref.step)
            return "finished"
        wf.submit_step(producer, producer.client, workflow, following.step, previous, now)
        return "submitted"
    except NotFound:
        log.warning("workflow %s: step %d succeeded, but the workflow is gone (expired?): "
                    "nothing follows", ref.workflow, ref.step)
        return "unknown"
    except Rejected as rej:
        delay = shed_backoff(0, rej.retry_after_s, get_settings().retry_backoff_max)
        log.info("workflow %s step %d shed (%s): tried again in %.1fs", ref.workflow,
                 following.step, rej.reason, delay)
    except (redis.RedisError, SluiceError) as exc:
        log.warning("workflow %s step %d not submitted (%s: %s): handed to %s",
                    ref.workflow, following.step, type(exc).__name__, exc, wf.ADVANCE_TASK)
        delay = 0.0
    _hand_over(producer, following, result, delay)
    return "waiting"


def _hand_over(producer: Producer, ref: wf.StepRef, previous: Any, delay: float) -> None:
    """Submit `workflow.advance` for step `ref` in `delay` seconds (CRITICAL: never shed;
    kept in the outbox while Redis is down)."""
    payload = {"workflow": ref.workflow, "step": ref.step,
               "previous": dict(previous) if isinstance(previous, Mapping) else None}
    try:
        producer.submit(wf.ADVANCE_TASK, payload, idempotency_key=f"{ref.key()}:advance",
                        countdown=delay or None)
    except (redis.RedisError, SluiceError) as exc:
        log.error("ALERT workflow %s step %d is due and nothing will submit it (%s: %s): "
                  "submit %s %s by hand", ref.workflow, ref.step, type(exc).__name__, exc,
                  wf.ADVANCE_TASK, payload)


def advance(producer: Producer, workflow_id: str, number: int, previous: Any,
            now: float) -> str:
    """Submit step `number` unless it already was (then say where it is). Raises Rejected
    when the gate sheds it, NotFound without the workflow, InvalidPayload for a merge that
    makes its payload invalid."""
    client = producer.client
    workflow = wf.load(client, workflow_id)
    if not 1 <= number <= len(workflow.steps) + 1:
        raise NotFound(f"workflow {workflow_id} has no step {number}")
    if number > 1 and workflow.status[number - 2].state is not wf.StepState.SUCCEEDED:
        # the step before succeeded (it handed over), but could not say so itself
        wf.finish_step(client, wf.StepRef(workflow_id, number - 1), previous, now)
        workflow = wf.load(client, workflow_id)
    if number > len(workflow.steps):
        return "finished"
    state = workflow.status[number - 1].state
    if state in (wf.StepState.QUEUED, wf.StepState.SUCCEEDED):
        return state.value
    wf.submit_step(producer, client, workflow, number, workflow.results.get(number - 1, previous),
                   now)
    return "submitted"


class Advance(BaseModel):
    """`workflow.advance`: submit step `step` of `workflow` (the dict the step before
    returned, `previous`, in case the workflow record lacks it)."""

    workflow: str = Field(min_length=1, max_length=200)
    step: int = Field(ge=1)
    previous: dict[str, Any] | None = None


@sluice_task(wf.ADVANCE_TASK, Priority.CRITICAL, Advance, max_retries=ADVANCE_RETRIES)
def advance_task(payload: Advance) -> str:
    """Try a waiting step again; shed again, retry later with a longer delay."""
    try:
        return advance(default_producer(), payload.workflow, payload.step, payload.previous,
                       time.time())
    except Rejected as rej:
        attempt = (current_task.request.retries or 0) + 1
        delay = shed_backoff(attempt, rej.retry_after_s, get_settings().retry_backoff_max)
        shed = StepShed(f"workflow {payload.workflow} step {payload.step} shed "
                        f"({rej.reason}, level {rej.level.name}) {attempt} time(s)")
        raise current_task.retry(exc=shed, countdown=delay,
                                 max_retries=ADVANCE_RETRIES) from None
    except NotFound as exc:
        raise PermanentError(str(exc)) from None
    except InvalidPayload as exc:
        raise PermanentError(f"step {payload.step} of workflow {payload.workflow}: with the "
                             f"result of step {payload.step - 1} merged in, {exc}") from None


def name_workflow_step(rec: DeadLetterRecord) -> DeadLetterRecord:
    """A dead letter of a workflow step (or of the job submitting one) names the step, and
    the step is marked dead-lettered."""
    if rec.workflow is not None or rec.task_name == MALFORMED_TASK:
        return rec
    ref = _failed_step(rec)
    if ref is None:
        return rec
    try:
        wf.mark_step(redis_client(), ref, wf.StepState.DEAD, time.time(),
                     reason=f"{rec.reason} {rec.exc_type}: {rec.exc_message}"[:300], dead_letter=rec.task_id)
    except redis.RedisError as exc:
        log.warning("workflow %s step %d dead-lettered, not marked (%s)", ref.workflow,
                    ref.step, type(exc).__name__)
    return dataclasses.replace(rec, workflow=ref.as_json())


def _failed_step(rec: DeadLetterRecord) -> wf.StepRef | None:
    if rec.task_name == wf.ADVANCE_TASK:
        payload = rec.payload if isinstance(rec.payload, Mapping) else {}
        return wf.step_ref({H_WORKFLOW: payload.get("workflow"),
                            H_WORKFLOW_STEP: payload.get("step")})
    request = getattr(current_task, "request", None)
    if request is not None and rec.task_id in (request.id, getattr(request, H_ORIGIN, None)):
        return wf.step_ref(request)
    try:  # the job's request is not at hand (a hard time limit): by its task id
        return wf.ref_of_task(redis_client(), rec.task_id)
    except redis.RedisError:
        return None


BEFORE_RECORD.append(name_workflow_step)
