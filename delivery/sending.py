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

While a monitor listens (Flower announces itself with `announce_monitor`), a job that is
sent is also announced, in the same script call, by the `task-sent` event Celery's own
publish sends when `task_send_sent_event` is on: task name, masked arguments, exchange and
routing key (the queue). It is the only event that tells a monitor which queue a job went to
(a worker's `task-received` does not carry it): without it Flower shows `routing_key: null`
for every job. Building it from the message costs Redis some 20 us per job, so, like the
workers' task events that Flower switches on while it runs, it is sent only while the
announcement lasts; otherwise the script pays one EXISTS.
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
           "FENCE_TTL_S", "sent_event_channel", "announce_monitor", "MONITOR_KEY"]

#: How long a fence (and a flushed job's marker) lives: longer than any outage a send can
#: stay undecided through.
FENCE_TTL_S = 86_400

#: string key, present while a monitor wants `task-sent` events (`announce_monitor`). (A key
#: name: its place is `sluice.keys`.)
MONITOR_KEY = keys.MONITOR_KEY

#: Celery's `task-sent` event for the job just queued (ARGV: the event channel, the task
#: id, the queue, the message, the time), the way kombu publishes to the `celeryev` fanout
#: exchange on Redis. The body is plain JSON (no `body_encoding`), which kombu accepts.
_SENT_EVENT = """
local function sent_event(channel, id, queue, message, now)
  local ok, msg = pcall(cjson.decode, message)
  if not ok or type(msg) ~= 'table' then return end
  local h = type(msg['headers']) == 'table' and msg['headers'] or {}
  local props = type(msg['properties']) == 'table' and msg['properties'] or {}
  local info = type(props['delivery_info']) == 'table' and props['delivery_info'] or {}
  local client = h['origin']
  if type(client) ~= 'string' then client = 'sluice-producer' end
  local event = cjson.encode({type = 'task-sent', uuid = id, name = h['task'],
    args = h['argsrepr'], kwargs = h['kwargsrepr'], retries = h['retries'], eta = h['eta'],
    expires = h['expires'], root_id = h['root_id'], parent_id = h['parent_id'],
    queue = queue, exchange = info['exchange'], routing_key = info['routing_key'] or queue,
    hostname = client, timestamp = tonumber(now), clock = 0})
  redis.call('PUBLISH', channel, cjson.encode({body = event,
    ['content-type'] = 'application/json', ['content-encoding'] = 'utf-8',
    headers = {hostname = client},
    properties = {delivery_mode = 1, priority = 0, delivery_tag = id,
                  delivery_info = {exchange = 'celeryev', routing_key = 'task.sent'}}}))
end
"""

_SEND = _SENT_EVENT + """
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
if ARGV[7] ~= '' and redis.call('EXISTS', KEYS[6]) == 1 then
  sent_event(ARGV[7], id, KEYS[1], ARGV[2], ARGV[3])
end
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
              flush: bool = False, now: float | None = None,
              sent_events: bool = True) -> list[Sent]:
    """Send `jobs` in one pipeline (one script call each): one round trip; while a monitor
    is announced, each job sent gets a `task-sent` event too, unless `sent_events` is False.
    Raises redis errors as they are: the caller decides between "not sent" (`is_not_sent`)
    and unknown (`fence`)."""
    if not jobs:
        return []
    now = time.time() if now is None else now
    channel = sent_event_channel(client) if sent_events else ""
    calls = [_call(job, now, idempotency_ttl, flush, channel) for job in jobs]
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


def announce_monitor(client: redis.Redis, ttl_s: int) -> None:
    """A monitor (Flower) listens: announce every job sent in the next `ttl_s` seconds with a
    `task-sent` event. Renew it while the monitor runs. Raises redis errors."""
    client.set(MONITOR_KEY, "1", ex=ttl_s)


def sent_event_channel(client: redis.Redis) -> str:
    """The Pub/Sub channel of `task-sent` events on `client`'s database, as kombu names it
    (`fanout_prefix` and `fanout_patterns`, both on by default): `/<db>.celeryev/task.sent`."""
    db = client.connection_pool.connection_kwargs.get("db", 0)
    return f"/{db}.celeryev/task.sent"


def _call(job: Outgoing, now: float, ttl: int, flush: bool,
          channel: str) -> list[str | float]:
    idem = keys.idempotency(job.idempotency_key) if job.idempotency_key else ""
    return [job.queue, keys.LEDGER, keys.LEDGER_AT, keys.fence(job.task_id), idem,
            MONITOR_KEY, job.task_id, job.message, now, ttl, "flush" if flush else "send",
            FENCE_TTL_S, channel]


def _evalsha_all(client: redis.Redis, calls: list[list[str | float]]) -> list[Any]:
    pipe = client.pipeline(transaction=False)
    for call in calls:
        pipe.evalsha(_SEND_SHA, 6, *call)
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
