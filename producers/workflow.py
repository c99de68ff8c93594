"""Workflows: ordered steps, each a Sluice job that passes the gate when it is due.

    from producers import submit_workflow
    submit_workflow([
        {"task": "data.sync", "payload": {"source": "crm", "destination": "dwh"}},
        {"task": "export.csv", "payload": {"dataset": "crm"}, "merge": True},
        {"task": "email.send", "payload": {"to": "ops@example.com", "subject": "done"}},
    ])

`submit_workflow` validates every step, keeps the workflow in Redis (`keys.workflow`) and
submits the first step; the worker that runs a step submits the next one when it succeeds
(`workers.workflow`), with the dict the step returned merged into the next payload when that
step declares `merge`. Each step's message carries the workflow id and its step number
(`H_WORKFLOW`, `H_WORKFLOW_STEP`, steps are numbered from 1) and an idempotency key of its
own, so a redelivered step never submits its successor twice. A step the gate sheds waits
and is retried with backoff (state `waiting`); a step that fails for good is a dead letter
naming the workflow and the step, and replaying it resumes the workflow from there.
"""

from __future__ import annotations

import enum
import json
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import redis
from celery import Celery

from producers.api import Producer, Receipt, task_for
from sluice import keys
from sluice.connections import texts
from sluice.errors import InvalidPayload, InvalidWorkflow, NotFound, Rejected, UnknownTask
from sluice.message import (
    H_WORKFLOW,
    H_WORKFLOW_STEP,
    has_secrets,
    mask_secrets,
    validate_payload,
)
from sluice.priorities import Priority
from sluice.sealed import can_seal, seal_secrets

__all__ = ["Step", "StepRef", "StepState", "StepStatus", "Workflow", "WorkflowReceipt",
           "submit_workflow", "parse_steps", "check_steps", "merged_payload", "load",
           "submit_step", "finish_step", "mark_step", "step_ref", "ref_of_task",
           "workflow_headers", "note_replayed", "ADVANCE_TASK", "WORKFLOW_TTL_S", "MAX_STEPS"]

#: the internal task that submits a step the gate shed, later (`workers.workflow`)
ADVANCE_TASK = "workflow.advance"
#: a workflow is kept this long after its last change (a dead-lettered step can be replayed
#: for as long: the dead-letter retry job gives up after 24 h, an operator later)
WORKFLOW_TTL_S = 30 * 86400
MAX_STEPS = 100
_ID = re.compile(r"[A-Za-z0-9_.:@+-]{1,200}")
_STEP_KEYS = ("task", "payload", "priority", "merge")


class StepState(enum.StrEnum):
    """Where one step of a workflow is."""

    PENDING = "pending"  #: not due yet: the step before it has not succeeded
    WAITING = "waiting"  #: due, but shed by the gate: retried with backoff
    QUEUED = "queued"  #: accepted by the gate: in its queue, or running
    SUCCEEDED = "succeeded"  #: it returned
    DEAD = "dead-lettered"  #: it failed for good: a dead letter; replaying it resumes


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    """One step: a Sluice task and its payload. `merge`: True to merge the dict the step
    before returned into this payload (its keys win), or the names of the keys to take."""

    task: str
    payload: dict[str, Any] = field(default_factory=dict)
    priority: Priority | None = None
    merge: bool | tuple[str, ...] = False

    def as_json(self) -> dict[str, Any]:
        """The step as JSON (what the workflow record and `sluice workflow show` keep)."""
        return {"task": self.task, "payload": self.payload,
                "priority": self.priority.name if self.priority else None,
                "merge": list(self.merge) if isinstance(self.merge, tuple) else self.merge}


@dataclass(frozen=True, slots=True)
class StepRef:
    """Which step of which workflow a job is: `step` counts from 1."""

    workflow: str
    step: int

    def as_json(self) -> dict[str, Any]:
        return {"id": self.workflow, "step": self.step}

    def key(self) -> str:
        """The step's idempotency key: one job per step, however often it is submitted."""
        return f"workflow:{self.workflow}:{self.step}"


@dataclass(frozen=True, slots=True, kw_only=True)
class StepStatus:
    """A step's state, with the job that runs it and, while waiting, why."""

    step: int
    state: StepState = StepState.PENDING
    task_id: str | None = None
    queue: str | None = None
    attempts: int = 0  #: submissions the gate shed
    reason: str | None = None
    at: float | None = None  #: when the state was entered
    dead_letter: str | None = None  #: the task id its dead letter is stored under


@dataclass(frozen=True, slots=True, kw_only=True)
class Workflow:
    """A workflow as kept in Redis."""

    id: str
    steps: tuple[Step, ...]
    origin: str
    created_at: float
    status: tuple[StepStatus, ...]
    results: dict[int, Any]

    @property
    def state(self) -> str:
        """`succeeded`, `dead-lettered` or `waiting` when a step is, else `running`."""
        states = {s.state for s in self.status}
        if states == {StepState.SUCCEEDED}:
            return "succeeded"
        for state in (StepState.DEAD, StepState.WAITING):
            if state in states:
                return state.value
        return "running"


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkflowReceipt:
    """What `submit_workflow` returns: the workflow id and the first step's receipt."""

    workflow_id: str
    first: Receipt
    steps: int
    duplicate: bool = False


# -- parsing and validation (no I/O) --------------------------------------------------------

def parse_steps(raw: object) -> tuple[list[Step], list[str]]:
    """Steps from JSON or TOML (a list of tables), with a problem per bad entry."""
    if not isinstance(raw, list) or not raw:
        return [], ["steps must be a non-empty list of {task, payload, priority, merge}"]
    steps, problems = [], []
    for number, item in enumerate(raw, start=1):
        step, errors = _parse_step(item, number)
        problems += errors
        if step is not None:
            steps.append(step)
    return steps, problems


def _parse_step(item: object, number: int) -> tuple[Step | None, list[str]]:
    where = f"step {number}"
    if not isinstance(item, Mapping):
        return None, [f"{where}: must be a table with a task (got {type(item).__name__})"]
    problems = [f"{where}: unknown option {k!r} (one of {', '.join(_STEP_KEYS)})"
                for k in item if k not in _STEP_KEYS]
    task, payload = item.get("task"), item.get("payload", {})
    if not isinstance(task, str) or not task:
        problems.append(f"{where}: task must be a task name")
    if not isinstance(payload, Mapping):
        problems.append(f"{where}: payload must be a table")
    priority = _priority(item.get("priority"), where, problems)
    merge = _merge(item.get("merge", False), where, problems)
    if problems:
        return None, problems
    return Step(task=str(task), payload=dict(payload), priority=priority, merge=merge), []


def _priority(value: object, where: str, problems: list[str]) -> Priority | None:
    if value is None:
        return None
    try:
        if not isinstance(value, str | Priority):
            raise ValueError(value)
        return Priority.parse(value)
    except ValueError:
        problems.append(f"{where}: unknown priority {value!r} (CRITICAL, HIGH, NORMAL or LOW)")
        return None


def _merge(value: object, where: str, problems: list[str]) -> bool | tuple[str, ...]:
    if isinstance(value, bool):
        return value
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    problems.append(f"{where}: merge must be true, false or a list of field names")
    return False


def check_steps(app: Celery, steps: Sequence[Step]) -> list[str]:
    """Every problem of `steps`, named by step: an unknown task, each bad payload field (a
    field a merge may still supply is not missing), a merge into the first step or of a
    field the task does not have."""
    if not steps:
        return ["a workflow needs at least one step"]
    if len(steps) > MAX_STEPS:
        return [f"a workflow has at most {MAX_STEPS} steps (got {len(steps)})"]
    problems: list[str] = []
    for number, step in enumerate(steps, start=1):
        problems += [f"step {number} ({step.task}): {p}" for p in _step_problems(app, step,
                                                                                 number)]
    return problems


def _step_problems(app: Celery, step: Step, number: int) -> list[str]:
    try:
        model = task_for(app, step.task).payload_model
    except UnknownTask as exc:
        return [str(exc)]
    problems = []
    if has_secrets(model) and not can_seal():
        problems.append("it has secret fields: set SLUICE_SECRET_KEY to seal them")
    if step.merge and number == 1:
        problems.append("merge: the first step has no step before it to merge")
    if isinstance(step.merge, tuple):
        problems += [f"merge: {name!r} is not a field of {step.task}"
                     for name in step.merge if name not in model.model_fields]
    try:
        validate_payload(step.task, model, step.payload)
    except InvalidPayload as exc:
        supplied = set(model.model_fields) if step.merge is True else set(step.merge or ())
        problems += [f"payload: {e['field']}: {e['message']}" for e in exc.errors
                     if not (e["type"] == "missing" and e["field"] in supplied)]
    return problems


def merged_payload(step: Step, previous: Any) -> dict[str, Any]:
    """The payload a step runs with: its own, with what the step before returned merged in
    when it declares `merge` (a result that is not a dict adds nothing)."""
    if not step.merge or not isinstance(previous, Mapping):
        return dict(step.payload)
    names = step.merge if isinstance(step.merge, tuple) else tuple(previous)
    taken = {k: previous[k] for k in names if k in previous}
    return {**step.payload, **taken}


# -- the workflow record (Redis) --------------------------------------------------------------

def load(client: redis.Redis, workflow_id: str) -> Workflow:
    """The workflow `workflow_id`; NotFound if there is none (or it has expired)."""
    raw = texts(client.hgetall(keys.workflow(workflow_id)))
    if "spec" not in raw:
        raise NotFound(f"no workflow {workflow_id!r} (never submitted, or expired after "
                       f"{WORKFLOW_TTL_S // 86400} days)")
    spec = json.loads(raw["spec"])
    steps, _ = parse_steps(spec["steps"])
    status = tuple(_status(raw.get(f"step:{n}"), n) for n in range(1, len(steps) + 1))
    results = {n: json.loads(raw[f"result:{n}"]) for n in range(1, len(steps) + 1)
               if f"result:{n}" in raw}
    return Workflow(id=workflow_id, steps=tuple(steps), origin=spec.get("origin", ""),
                    created_at=float(spec.get("created_at", 0)), status=status,
                    results=results)


def _status(raw: str | None, number: int) -> StepStatus:
    if not raw:
        return StepStatus(step=number)
    data = json.loads(raw)
    return StepStatus(step=number, state=StepState(data["state"]), task_id=data.get("task_id"),
                      queue=data.get("queue"), attempts=int(data.get("attempts", 0)),
                      reason=data.get("reason"), at=data.get("at"),
                      dead_letter=data.get("dead_letter"))


def _create(app: Celery, client: redis.Redis, workflow_id: str, steps: Sequence[Step],
            origin: str, now: float) -> bool:
    """Store a new workflow, its secret fields sealed as on a message; False if one with
    this id exists (with these steps: InvalidWorkflow otherwise)."""
    sealed = [replace(s, payload=seal_secrets(s.task, task_for(app, s.task).payload_model,
                                              s.payload)) for s in steps]
    spec = {"steps": [s.as_json() for s in sealed], "origin": origin, "created_at": now}
    key = keys.workflow(workflow_id)
    if client.hsetnx(key, "spec", json.dumps(spec, default=str)):
        client.expire(key, WORKFLOW_TTL_S)
        return True
    existing, _ = parse_steps(json.loads(texts(client.hgetall(key)).get("spec") or "{}")
                              .get("steps"))
    if _masked(app, existing) != _masked(app, steps):
        raise InvalidWorkflow([f"workflow {workflow_id!r} exists with other steps"])
    return False


def _masked(app: Celery, steps: Sequence[Step]) -> list[Any]:
    """The steps as JSON, secrets masked: what two submissions of one workflow compare."""
    masked: list[Any] = json.loads(json.dumps([
        {**s.as_json(), "payload": mask_secrets(task_for(app, s.task).payload_model, s.payload)}
        for s in steps], default=str))
    return masked


def mark_step(client: redis.Redis, ref: StepRef, state: StepState, now: float,
              **fields: Any) -> bool:
    """Move a step to `state` (with `task_id`, `queue`, `reason`, ...). A step that
    succeeded stays so: a late or duplicate report cannot move it back. Returns whether it
    moved."""
    key, name = keys.workflow(ref.workflow), f"step:{ref.step}"

    def move(pipe: Any) -> bool:
        old = json.loads(pipe.hget(key, name) or "{}")
        if old.get("state") == StepState.SUCCEEDED and state is not StepState.SUCCEEDED:
            return False
        attempts = old.get("attempts", 0) + (1 if state is StepState.WAITING else 0)
        new = {**old, "state": state.value, "at": now, "attempts": attempts, **fields}
        pipe.multi()
        pipe.hset(key, name, json.dumps(new, default=str))
        pipe.expire(key, WORKFLOW_TTL_S)
        return True

    return bool(client.transaction(move, key,  # type: ignore[arg-type]
                                   value_from_callable=True))


def finish_step(client: redis.Redis, ref: StepRef, result: Any, now: float) -> Any:
    """Mark a step succeeded and keep what it returned (the first report wins: a skipped
    redelivery returns nothing). Returns the kept result."""
    key = keys.workflow(ref.workflow)
    if isinstance(result, Mapping):
        client.hsetnx(key, f"result:{ref.step}", json.dumps(result, default=str))
    mark_step(client, ref, StepState.SUCCEEDED, now)
    kept = client.hget(key, f"result:{ref.step}")
    return json.loads(kept) if kept else None


def step_ref(source: Any) -> StepRef | None:
    """The workflow step a job is, from its headers (a dict or a Celery request, whose
    attributes the headers are); None for a job outside any workflow."""
    get = source.get if isinstance(source, Mapping) else lambda k: getattr(source, k, None)
    workflow, step = get(H_WORKFLOW), get(H_WORKFLOW_STEP)
    try:
        return StepRef(str(workflow), int(step)) if workflow and step else None
    except (TypeError, ValueError):
        return None


def workflow_headers(ref: StepRef) -> dict[str, Any]:
    """The message headers that make a job step `ref.step` of `ref.workflow`."""
    return {H_WORKFLOW: ref.workflow, H_WORKFLOW_STEP: ref.step}


def ref_of_task(client: redis.Redis, task_id: str) -> StepRef | None:
    """The step a job (by its first task id) was submitted as, if any."""
    raw = client.get(keys.workflow_task(task_id))
    if not raw:
        return None
    workflow, _, step = (raw.decode() if isinstance(raw, bytes) else str(raw)).rpartition(":")
    return StepRef(workflow, int(step)) if workflow and step.isdigit() else None


def _queued(client: redis.Redis, ref: StepRef, receipt: Receipt, now: float,
            reason: str | None = None) -> None:
    if not receipt.duplicate:
        client.set(keys.workflow_task(receipt.task_id), f"{ref.workflow}:{ref.step}",
                   ex=WORKFLOW_TTL_S)
        mark_step(client, ref, StepState.QUEUED, now, task_id=receipt.task_id,
                  queue=receipt.queue, reason=reason)


def note_replayed(client: redis.Redis, ref: StepRef, task_id: str, queue: str,
                  dead_letter_id: int, now: float) -> None:
    """A dead-lettered step was replayed as `task_id`: it is queued again."""
    client.set(keys.workflow_task(task_id), f"{ref.workflow}:{ref.step}", ex=WORKFLOW_TTL_S)
    mark_step(client, ref, StepState.QUEUED, now, task_id=task_id, queue=queue,
              reason=f"replay of dead letter {dead_letter_id}")


# -- submission --------------------------------------------------------------------------

def submit_step(producer: Producer, client: redis.Redis, workflow: Workflow, number: int,
                previous: Any, now: float) -> Receipt:
    """Submit step `number` through the gate (once: its idempotency key), merging `previous`
    when it declares so. Shed: the step is marked `waiting` and Rejected is raised. An
    invalid merged payload raises InvalidPayload."""
    step, ref = workflow.steps[number - 1], StepRef(workflow.id, number)
    try:
        receipt = producer.submit(step.task, merged_payload(step, previous),
                                  priority=step.priority, idempotency_key=ref.key(),
                                  headers=workflow_headers(ref))
    except Rejected as rej:
        mark_step(client, ref, StepState.WAITING, now, reason=rej.reason,
                  retry_after_s=rej.retry_after_s)
        raise
    _queued(client, ref, receipt, now)
    return receipt


def submit_workflow(steps: Sequence[Step | Mapping[str, Any]], *,
                    workflow_id: str | None = None, producer: Producer | None = None,
                    client: redis.Redis | None = None, origin: str = "api",
                    now: float | None = None) -> WorkflowReceipt:
    """Validate every step and submit the first through the gate; the workers do the rest.

    Raises InvalidWorkflow naming every problem (nothing submitted), or Rejected when the
    gate sheds the first step (nothing kept: submit again later). `workflow_id`: your own id
    (letters, digits, `_.:@+-`); submitting the same id again enqueues nothing and returns
    `duplicate=True`, which is how a schedule fires a workflow once per tick.
    """
    from producers import default_producer  # the package imports this module

    producer = producer or default_producer()
    client = client or producer.client
    parsed = _as_steps(steps)
    problems = check_steps(producer.app, parsed)
    workflow_id = workflow_id or uuid.uuid4().hex
    if not _ID.fullmatch(workflow_id):
        problems.insert(0, f"workflow id {workflow_id!r} must be 1-200 letters, digits or _.:@+-")
    if problems:
        raise InvalidWorkflow(problems)
    now = time.time() if now is None else now
    created = _create(producer.app, client, workflow_id, parsed, origin, now)
    workflow = load(client, workflow_id)
    try:
        receipt = submit_step(producer, client, workflow, 1, None, now)
    except Rejected:
        if created:  # nothing of it was accepted: leave nothing behind
            client.delete(keys.workflow(workflow_id))
        raise
    return WorkflowReceipt(workflow_id=workflow_id, first=receipt, steps=len(parsed),
                           duplicate=receipt.duplicate)


def _as_steps(steps: Sequence[Step | Mapping[str, Any]]) -> list[Step]:
    parsed, problems = parse_steps([s.as_json() if isinstance(s, Step) else s for s in steps])
    if problems:
        raise InvalidWorkflow(problems)
    return parsed
