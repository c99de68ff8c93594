"""The ledger of accepted jobs (`queue\nmessage` by task id): what closes kombu's one unguarded window.

kombu's Redis transport BRPOPs a message and only then records it in its unacked set; a
worker that dies between the two (SIGKILL, power loss, the in-flight reply of celery #4354)
loses that job, and nothing else knows it existed. So every accepted job is also written to
the ledger, in the same pipeline as its LPUSH, and a worker forgets it as the job starts (by
then kombu holds it in unacked, which restores it if the worker dies). The reconcile job
re-sends a ledger entry that is neither queued, nor reserved, nor started, once it has been
seen missing twice, `confirm_s` apart: a job in flight is missing only for milliseconds.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis

from sluice import keys
from sluice.priorities import QUEUES

__all__ = ["record", "forget", "LostVerdict", "judge", "recover_lost"]

log = logging.getLogger("sluice.ledger")


def record(pipe: Any, sent: list[tuple[str, str, str]], now: float) -> None:
    """Add the ledger writes for sent jobs, `(task_id, queue, message)`, to `pipe` (the
    pipeline that LPUSHes them): two commands whatever the batch size."""
    if sent:
        pipe.hset(keys.LEDGER, mapping={t: f"{q}\n{m}" for t, q, m in sent})  # no re-encoding
        pipe.zadd(keys.LEDGER_AT, {t: now for t, _, _ in sent})


def forget(client: redis.Redis, task_ids: Iterable[str]) -> None:
    """The jobs started (or were dropped on purpose): they leave the ledger. One HDEL, on
    every job start; the time index and the suspects are cleaned by `recover_lost`."""
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


def recover_lost(client: redis.Redis, now: float | None = None, grace_s: float = 30.0,
                 confirm_s: float = 5.0, limit: int = 50_000) -> int:
    """Re-send accepted jobs that vanished; returns how many were re-sent.

    Examines (at most `limit`) index entries older than `grace_s`: those of started jobs are
    dropped from the index; the queues and the unacked set are scanned only when some old
    entry is still in the ledger.
    """
    now = time.time() if now is None else now
    old = [t.decode() for t in client.zrangebyscore(keys.LEDGER_AT, "-inf", now - grace_s,
                                                    start=0, num=limit)]
    if not old:
        client.delete(keys.LEDGER_SUSPECTS)
        return 0
    entries = dict(zip(old, client.hmget(keys.LEDGER, old)))
    started = [t for t, raw in entries.items() if raw is None]  # forgotten: index only
    old = [t for t, raw in entries.items() if raw is not None]
    present = _ids_in_queues(client) | _ids_reserved(client) if old else set()
    suspects = {k.decode(): float(v) for k, v in client.hgetall(keys.LEDGER_SUSPECTS).items()}
    verdict = judge(old, present, suspects, now, confirm_s)
    pipe = client.pipeline(transaction=False)
    if started:
        pipe.zrem(keys.LEDGER_AT, *started)
    pipe.delete(keys.LEDGER_SUSPECTS)
    if verdict.suspects:
        pipe.hset(keys.LEDGER_SUSPECTS, mapping=verdict.suspects)
    resent = 0
    for task_id, raw in zip(verdict.resend, client.hmget(keys.LEDGER, list(verdict.resend))
                            if verdict.resend else []):
        if raw is None:
            continue  # it started meanwhile
        queue, _, message = raw.decode().partition("\n")
        pipe.lpush(queue, message)
        pipe.zadd(keys.LEDGER_AT, {task_id: now})
        log.error("accepted job %s was lost in flight (a worker died holding it): re-sent "
                  "to %s", task_id, queue)
        resent += 1
    pipe.execute()
    return resent
