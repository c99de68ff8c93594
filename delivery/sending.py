"""The one way a job reaches its queue: an atomic Redis script, idempotent by task id.

One script call does, all or nothing: the idempotency claim, the LPUSH, and the ledger
entry (`delivery.ledger`). So a claimed key always has its job queued, and a cancelled or
crashed submission leaves neither.

When Redis does not answer in time the outcome is unknown: the script may still run once
Redis wakes up. `fence` settles it: atomically, either the job is already in the ledger
(it was sent) or a fence key is set that makes any late arrival of the same task id a
no-op (it will never be sent). The outbox flush sends through the same script in `flush`
mode, which refuses a task id the ledger already knows, so a CRITICAL job whose first send
did arrive is not sent twice. Redis-py's automatic retries are off for these calls
(`sluice.connections`): a blind retry of a send that did arrive is a duplicate.
"""

from __future__ import annotations

import enum
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis.exceptions import NoScriptError

from sluice import keys

__all__ = ["Outgoing", "Sent", "Outcome", "send_many", "fence", "is_not_sent",
           "FENCE_TTL_S"]

#: How long a fence (and a flushed job's marker) lives: longer than any outage a send can
#: stay undecided through.
FENCE_TTL_S = 86_400

_SEND = """
local id, mode = ARGV[1], ARGV[5]
if KEYS[5] ~= '' then
  local first = redis.call('GET', KEYS[5])
  if first and first ~= id then return {'duplicate', first} end
end
if mode == 'flush' then
  if redis.call('HEXISTS', KEYS[2], id) == 1 or redis.call('ZSCORE', KEYS[3], id) then
    return {'already'}
  end
  redis.call('SET', KEYS[4], 'flushed', 'EX', ARGV[6])
elseif redis.call('EXISTS', KEYS[4]) == 1 then
  return {'fenced'}
end
redis.call('LPUSH', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[2], id, KEYS[1] .. '\\n' .. ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[3], id)
if KEYS[5] ~= '' then redis.call('SET', KEYS[5], id, 'EX', ARGV[4]) end
return {'sent'}
"""

_FENCE = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 or redis.call('ZSCORE', KEYS[2], ARGV[1]) then
  return 'sent'
end
redis.call('SET', KEYS[3], 'fenced', 'EX', ARGV[2])
return 'fenced'
"""


class Outcome(enum.StrEnum):
    """What one send did."""

    SENT = "sent"            #: queued now
    DUPLICATE = "duplicate"  #: the idempotency key was taken by an earlier job: nothing sent
    FENCED = "fenced"        #: this task id was fenced off after an undecided send: not sent
    ALREADY = "already"      #: (flush) the ledger shows the job arrived before: not re-sent


@dataclass(frozen=True, slots=True, kw_only=True)
class Outgoing:
    """One encoded job ready to send."""

    task_id: str
    queue: str
    message: str
    idempotency_key: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Sent:
    """The outcome of one send; `first_task_id` is set for a duplicate."""

    outcome: Outcome
    first_task_id: str | None = None


_SEND_SHA = hashlib.sha1(_SEND.encode()).hexdigest()


def send_many(client: redis.Redis, jobs: Sequence[Outgoing], *, idempotency_ttl: int,
              flush: bool = False, now: float | None = None) -> list[Sent]:
    """Send `jobs` in one pipeline (one script call each): one round trip. Raises redis
    errors as they are: the caller decides between "not sent" (`is_not_sent`) and unknown
    (`fence`)."""
    if not jobs:
        return []
    now = time.time() if now is None else now
    calls = [_call(job, now, idempotency_ttl, flush) for job in jobs]
    replies = _evalsha_all(client, calls)
    missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
    if missing:  # a restarted Redis forgot the script: nothing of these ran, load and rerun
        client.script_load(_SEND)
        for i, reply in zip(missing, _evalsha_all(client, [calls[i] for i in missing]), strict=False):
            replies[i] = reply
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return [_sent(reply) for reply in replies]


def _call(job: Outgoing, now: float, ttl: int, flush: bool) -> list[str | float]:
    idem = keys.idempotency(job.idempotency_key) if job.idempotency_key else ""
    return [job.queue, keys.LEDGER, keys.LEDGER_AT, keys.fence(job.task_id), idem,
            job.task_id, job.message, now, ttl, "flush" if flush else "send", FENCE_TTL_S]


def _evalsha_all(client: redis.Redis, calls: list[list[str | float]]) -> list[Any]:
    pipe = client.pipeline(transaction=False)
    for call in calls:
        pipe.evalsha(_SEND_SHA, 5, *call)
    return list(pipe.execute(raise_on_error=False))


def _sent(reply: list[bytes]) -> Sent:
    outcome = Outcome(reply[0].decode())
    return Sent(outcome=outcome, first_task_id=reply[1].decode() if len(reply) > 1 else None)


def fence(client: redis.Redis, task_id: str) -> bool:
    """Settle an undecided send of `task_id`: True if it arrived, False if it did not and
    now never will. Raises redis errors when Redis still cannot be reached."""
    reply = client.eval(_FENCE, 3, keys.LEDGER, keys.LEDGER_AT, keys.fence(task_id), task_id,
                        FENCE_TTL_S)
    return bytes(reply) == b"sent"


def is_not_sent(exc: redis.RedisError) -> bool:
    """Whether a failed send certainly never reached Redis: the connection itself could
    not be made. Anything else (a timeout, a reset while reading) leaves the outcome
    unknown."""
    return isinstance(exc, redis.ConnectionError | redis.TimeoutError) and \
        "connecting to" in str(exc)
