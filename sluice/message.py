"""The message contract shared by producers and workers: the headers every Sluice message
carries beside Celery's own, payload validation, and the masking of secret fields."""

from __future__ import annotations

import datetime as dt
import functools
import json
import math
import typing
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, SecretBytes, SecretStr, ValidationError

from sluice.errors import InvalidPayload

__all__ = ["H_KEY", "H_SUBMITTED", "H_PRIORITY", "H_ORIGIN", "H_GENERATION", "H_TENANT",
           "DEFAULT_TENANT", "H_WORKFLOW", "H_WORKFLOW_STEP", "SECRET",
           "MASK", "waited", "expires_at", "validate_payload", "mask_secrets", "map_secrets",
           "has_secrets", "secret_fields"]

#: what the job's effects are keyed by (the idempotency key, or a replayed job's original key)
H_KEY = "sluice_key"
#: epoch seconds at which the producer sent the job
H_SUBMITTED = "sluice_submitted_at"
#: the priority name the job was submitted with
H_PRIORITY = "sluice_priority"
#: on a replayed dead letter: the original task id, so a new failure updates the same row
H_ORIGIN = "sluice_origin"
#: 0 for the original job, n for its n-th replay
H_GENERATION = "sluice_generation"
#: whose job it is (fair shares under pressure, per-tenant kill switches and figures)
H_TENANT = "sluice_tenant"
DEFAULT_TENANT = "default"
#: on a workflow step: the workflow's id and the step's index (0-based), so the worker that
#: runs it submits the next step, and a dead letter of it resumes the workflow when replayed
H_WORKFLOW = "sluice_workflow"
H_WORKFLOW_STEP = "sluice_workflow_step"

#: Mark a payload field secret with `Field(json_schema_extra=SECRET)` (or type it SecretStr).
SECRET = {"secret": True}
MASK = "***"


def waited(raw: bytes | str | None, now: float) -> float:
    """Seconds a queued message has waited since it was sent (0 when it is not a Sluice
    message: a queue is anyone's to write to, and one bad item must not break a reader)."""
    if not raw:
        return 0.0
    try:
        submitted = float(json.loads(raw)["headers"][H_SUBMITTED])
    except (ValueError, KeyError, TypeError, AttributeError):
        return 0.0
    return max(0.0, now - submitted) if math.isfinite(submitted) else 0.0


def expires_at(raw: bytes | str | None) -> float | None:
    """When a queued message expires (its deadline to start), in epoch seconds; None when
    it has no deadline or is not a message we can read."""
    if not raw:
        return None
    try:
        expires = json.loads(raw)["headers"]["expires"]
        return dt.datetime.fromisoformat(expires).timestamp() if expires else None
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


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


def mask_secrets(model: type[BaseModel], payload: Any) -> Any:
    """A copy of `payload` with every value the model marks secret replaced by `***`, at any
    depth (nested models, lists and dicts of them, optionals), matched by field name, alias
    or validation alias: for dead-letter rows, logs and the message's printable `argsrepr`."""
    return map_secrets(model, payload, _mask)


def _mask(value: Any) -> Any:
    return MASK if value is not None else None


def map_secrets(model: type[BaseModel], payload: Any, change: Callable[[Any], Any]) -> Any:
    """A copy of `payload` with `change(value)` in place of every value the model marks
    secret, at any depth: the one walk behind masking, sealing and unsealing. A model
    without secrets costs nothing (the submit path and every task start come here)."""
    if not isinstance(payload, dict) or not has_secrets(model):
        return payload
    fields = _fields_by_key(model)
    out = {}
    for key, value in payload.items():
        kind = fields.get(key)
        if kind is None:
            out[key] = value
        elif kind is _SECRET:
            out[key] = change(value)
        else:
            out[key] = _map_nested(kind, value, change)
    return out


def _map_nested(model: type[BaseModel], value: Any, change: Callable[[Any], Any]) -> Any:
    if isinstance(value, dict):
        # a dict[str, Model] field: walk each value when the keys are not the model's fields
        if value and not set(value) & set(_fields_by_key(model)):
            return {k: _map_nested(model, v, change) for k, v in value.items()}
        return map_secrets(model, value, change)
    if isinstance(value, list | tuple):
        return [_map_nested(model, v, change) for v in value]
    return value


@functools.cache
def has_secrets(model: type[BaseModel]) -> bool:
    """Whether any field of `model`, at any depth, is secret (self-references included)."""
    seen, todo = set(), [model]
    while todo:
        current = todo.pop()
        seen.add(current)
        for kind in _fields_by_key(current).values():
            if kind is _SECRET:
                return True
            if kind not in seen:
                todo.append(kind)
    return False


_SECRET = object()


@functools.cache
def _fields_by_key(model: type[BaseModel]) -> dict[str, Any]:
    """Every key a payload may use for a field (name, alias, validation aliases) -> `_SECRET`
    when its value is secret, or the nested model to walk into."""
    out: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if extra.get("secret") or _has_secret_type(info.annotation):
            kind: Any = _SECRET
        else:
            kind = _nested_model(info.annotation)
            if kind is None:
                continue
        for key in _keys_of(name, info):
            out[key] = kind
    return out


def _keys_of(name: str, info: Any) -> set[str]:
    keys = {name}
    if info.alias:
        keys.add(info.alias)
    alias = info.validation_alias
    choices = getattr(alias, "choices", None)
    for one in (choices if choices is not None else [alias]):
        if isinstance(one, str):
            keys.add(one)
        path = getattr(one, "path", None)
        if path and isinstance(path[0], str):
            keys.add(path[0])
    return keys


def _type_args(annotation: Any) -> list[Any]:
    """`annotation` and every type inside it (Optional, list, dict, Annotated, unions)."""
    seen, todo = [], [annotation]
    while todo:
        current = todo.pop()
        seen.append(current)
        todo.extend(typing.get_args(current))
    return seen


def _has_secret_type(annotation: Any) -> bool:
    return any(t in (SecretStr, SecretBytes) for t in _type_args(annotation))


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    for t in _type_args(annotation):
        if isinstance(t, type) and issubclass(t, BaseModel):
            return t
    return None


def secret_fields(model: type[BaseModel]) -> frozenset[str]:
    """The top-level keys of `model` whose values are secret (names and aliases)."""
    return frozenset(k for k, kind in _fields_by_key(model).items() if kind is _SECRET)
