"""demo.flaky (NORMAL): fails on purpose, to exercise retries and dead letters.

Each attempt appends a line (task id, attempt number, time, and the fingerprint of `token`
when one is given, never the token) to `flaky.jsonl`, then sleeps `sleep_s`, then fails
permanently if `permanent`, transiently while fewer than `fail_times` attempts have failed,
and otherwise succeeds. `token` is a secret field: it travels sealed through every retry and
dead letter (so, like every task with one, it needs SLUICE_SECRET_KEY to be submitted).
"""

from __future__ import annotations

import time

from celery import current_task
from pydantic import BaseModel, Field, SecretStr

from sluice.errors import PermanentError
from sluice.priorities import Priority
from workers import effects
from workers.base import sluice_task


class TransientFailure(Exception):
    """A failure that a retry may fix."""


class Flaky(BaseModel):
    fail_times: int = Field(0, ge=0)
    permanent: bool = False
    sleep_s: float = Field(0.0, ge=0, le=600)
    token: SecretStr | None = None  # sealed in transit; attempts record its fingerprint


@sluice_task("demo.flaky", Priority.NORMAL, Flaky)
def flaky(payload: Flaky) -> str:
    attempt = (current_task.request.retries or 0) + 1
    effects.append("flaky", {"task_id": current_task.request.id, "attempt": attempt,
                             "token": effects.fingerprint(payload.token)})
    time.sleep(payload.sleep_s)
    if payload.permanent:
        raise PermanentError("demo.flaky was asked to fail permanently")
    if attempt <= payload.fail_times:
        raise TransientFailure(f"transient failure {attempt} of {payload.fail_times}")
    return "ok"
