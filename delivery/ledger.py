"""The ledger of accepted jobs (`queue\nmessage` by task id): what closes kombu's one unguarded window.

kombu's Redis transport BRPOPs a message and only then records it in its unacked set; a
worker that dies between the two (SIGKILL, power loss, the in-flight reply of celery #4354)
loses that job, and nothing else knows it existed. So every accepted job is also written to
the ledger, in the same script call as its LPUSH (`delivery.sending`), and a worker forgets it
when the job ends, not when it starts: a job whose worker dies is put back on its queue, and
that redelivery has the same window. The reconcile job re-sends a ledger entry that is
neither queued nor reserved (kombu's unacked set holds a running job), once it has been seen
missing twice, `confirm_s` apart: a job in flight is missing only for milliseconds.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

import redis

from sluice import keys
from sluice.connections import hash_fields, text, texts
from sluice.priorities import QUEUES

__all__ = ["forget", "LostVerdict", "judge", "recover_lost", "survey", "resend", "Survey",
           "KEEP_STARTED_S"]

log = logging.getLogger("sluice.ledger")


def forget(client: redis.Redis, task_ids: Iterable[str]) -> None:
    """The jobs ended (or were dropped on purpose): they leave the ledger. The time index
    and the suspects are cleaned by `recover_lost`."""
    ids = list(task_ids)
    if ids:
        client.hdel(keys.LEDGER, *ids)


@dataclass(frozen=True, slots=True)
class LostVerdict:
    """Which old ledger entries to re-send now, and which to watch."""

    resend: frozenset[str]
    suspects: dict[str, float]


def judge(old: Iterable[str], present: set[str], suspects: dict[str, float], now: float,
          confirm_s: float) -> LostVerdict:
    """Pure: an old entry that is not present is a suspect; a suspect missing for
    `confirm_s` is lost and re-sent. Entries present again stop being suspects."""
    resend, watch = set(), {}
    for task_id in old:
        if task_id in present:
            continue
        first = suspects.get(task_id, now)
        if now - first >= confirm_s:
            resend.add(task_id)
        else:
            watch[task_id] = first
    return LostVerdict(frozenset(resend), watch)


def _ids_in_queues(client: redis.Redis) -> set[str]:
    ids: set[str] = set()
    for queue in QUEUES:
        for start in range(0, int(client.llen(queue)), 1000):
            for raw in client.lrange(queue, start, start + 999):
                ids.add(_message_id(raw))
    return ids


def _ids_reserved(client: redis.Redis) -> set[str]:
    """Task ids in kombu's unacked hash (values are `[message, exchange, routing_key]`)."""
    ids = set()
    for raw in client.hvals(keys.KOMBU_UNACKED):
        try:
            ids.add(str(json.loads(raw)[0]["headers"]["id"]))
        except (ValueError, IndexError, KeyError, TypeError):
            continue
    return ids


def _message_id(raw: bytes | str) -> str:
    try:
        return str(json.loads(raw)["headers"]["id"])
    except (ValueError, KeyError, TypeError):
        return ""  # not a message (garbage is the consumer's business)


#: Entries of started jobs stay in the time index this long after their grace, so that a
#: fence (`delivery.sending`) settling an undecided send still finds the evidence.
KEEP_STARTED_S = 120.0

#: Re-send one lost job only if its index score is still the one this run judged: two
#: reconcile runs at once then re-send it once, not twice.
_RESEND = """
if redis.call('ZSCORE', KEYS[2], ARGV[1]) ~= ARGV[2] then return 0 end
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
local sep = string.find(raw, '\\n', 1, true)
redis.call('LPUSH', string.sub(raw, 1, sep - 1), string.sub(raw, sep + 1))
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return 1
"""


@dataclass(frozen=True, slots=True)
class Survey:
    """What one reconcile run found: lost jobs to re-send, with the index score it saw."""

    resend: dict[str, str]


def recover_lost(client: redis.Redis, now: float | None = None, grace_s: float = 30.0,
                 confirm_s: float = 5.0, limit: int = 50_000) -> int:
    """Re-send accepted jobs that vanished; returns how many were re-sent."""
    now = time.time() if now is None else now
    return resend(client, survey(client, now, grace_s, confirm_s, limit), now)


def survey(client: redis.Redis, now: float, grace_s: float, confirm_s: float,
           limit: int = 50_000) -> Survey:
    """Judge (at most `limit`) index entries older than `grace_s`. Those of started jobs
    are dropped from the index (`KEEP_STARTED_S` later); the queues and the unacked set are
    scanned only when some old entry is still in the ledger."""
    scored = client.zrangebyscore(keys.LEDGER_AT, "-inf", now - grace_s, start=0, num=limit,
                                  withscores=True, score_cast_func=bytes)
    if not scored:
        client.delete(keys.LEDGER_SUSPECTS)
        return Survey({})
    scores = {text(t): text(s) for t, s in cast(list[tuple[bytes, bytes]], scored)}
    entries = dict(zip(scores, client.hmget(keys.LEDGER, list(scores)), strict=False))
    started = [t for t, raw in entries.items()
               if raw is None and float(scores[t]) < now - grace_s - KEEP_STARTED_S]
    old = [t for t, raw in entries.items() if raw is not None]
    present = _ids_in_queues(client) | _ids_reserved(client) if old else set()
    suspects = {k: float(v) for k, v in texts(client.hgetall(keys.LEDGER_SUSPECTS)).items()}
    verdict = judge(old, present, suspects, now, confirm_s)
    pipe = client.pipeline(transaction=False)
    if started:
        pipe.zrem(keys.LEDGER_AT, *started)
    pipe.delete(keys.LEDGER_SUSPECTS)
    if verdict.suspects:
        pipe.hset(keys.LEDGER_SUSPECTS, mapping=hash_fields(verdict.suspects))
    pipe.execute()
    return Survey({t: scores[t] for t in sorted(verdict.resend)})


def resend(client: redis.Redis, found: Survey, now: float) -> int:
    """Re-send each lost job of `found` unless another run re-sent it (or it started) since
    that survey; returns how many this call re-sent."""
    if not found.resend:
        return 0
    script = client.register_script(_RESEND)
    resent = 0
    for task_id, score in found.resend.items():
        if script(keys=[keys.LEDGER, keys.LEDGER_AT], args=[task_id, score, now]) == 1:
            log.error("accepted job %s was lost in flight (a worker died holding it): "
                      "re-sent", task_id)
            resent += 1
    return resent
