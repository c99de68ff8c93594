"""The message contract shared by producers and workers: the headers every Sluice message
carries beside Celery's own, payload validation, and the masking of secret fields."""

from __future__ import annotations

import functools
import json
import math
from typing import Any

from pydantic import BaseModel, SecretBytes, SecretStr, ValidationError

from sluice.errors import InvalidPayload

__all__ = ["H_KEY", "H_SUBMITTED", "H_PRIORITY", "H_ORIGIN", "H_GENERATION", "SECRET",
           "MASK", "waited", "validate_payload", "mask_secrets", "secret_fields"]

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
    """A copy of `payload` with every field the model marks secret replaced by `***`
    (for dead-letter rows and the message's printable `argsrepr`)."""
    secret = secret_fields(model)
    if not secret or not isinstance(payload, dict) or not secret & payload.keys():
        return payload
    return {k: MASK if k in secret else v for k, v in payload.items()}


@functools.cache
def secret_fields(model: type[BaseModel]) -> frozenset[str]:
    """Names (and aliases) of the fields of `model` marked secret."""
    names: set[str] = set()
    for name, info in model.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if info.annotation in _SECRET_TYPES or extra.get("secret"):
            names |= {name, info.alias or name}
    return frozenset(names)


_SECRET_TYPES = (SecretStr, SecretBytes, SecretStr | None, SecretBytes | None)
