"""How spooled dead letters (`delivery.spool`) get into the store. `drain_spool` moves both
spools; `drain_local_spool` drains this host's file (run by a worker as it starts, since on
another host reconcile cannot reach it).

Draining never deletes what it has not stored:

- the file is drained under its lock, which appenders and other drains also take, and is
  truncated only after every line is stored or quarantined;
- a Redis drain moves the items it takes (LMOVE) into its own processing list and deletes
  that list only after the commit; it holds a lease renewed per batch, and a later drain takes
  over the list of a drain whose lease expired (it died). Overlapping drains are then safe
  without any lock: each deletes exactly the items it moved and stored.
"""

from __future__ import annotations

import fcntl
import itertools
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import redis
from sqlalchemy.exc import SQLAlchemyError

from delivery.spool import drains_under_way
from dlq.store import CHUNK, DeadLetterStore, Unreadable
from sluice import keys
from sluice.records import DeadLetterRecord
from sluice.settings import get_settings

__all__ = ["DrainResult", "drain_spool", "drain_local_spool", "LEASE_MS"]

log = logging.getLogger("sluice.dlq.drain")

#: How long a Redis drain may go without renewing its lease (once per batch) before a later
#: drain takes its batch over. Longer than any one batch write; taking over a live drain's
#: batch only writes it twice (writes are idempotent), it never loses it.
LEASE_MS = 120_000

#: Take over the processing list of a drain whose lease has expired: all or nothing, so a
#: drain that renews its lease meanwhile is either left alone or re-registers afterwards.
_ADOPT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
local n = 0
while redis.call('LMOVE', KEYS[2], KEYS[4], 'LEFT', 'RIGHT') do n = n + 1 end
redis.call('SREM', KEYS[3], ARGV[1])
return n
"""


@dataclass(frozen=True, slots=True)
class DrainResult:
    """Dead letters a drain wrote to the store, and those it quarantined."""

    stored: int = 0
    quarantined: int = 0

    def __add__(self, other: DrainResult) -> DrainResult:
        return DrainResult(self.stored + other.stored, self.quarantined + other.quarantined)


def drain_spool(store: DeadLetterStore, client: redis.Redis | None, path: Path,
                batch: int = CHUNK, lease_ms: int = LEASE_MS) -> DrainResult:
    """Move spooled records (this host's file, then Redis) into the store; idempotent.

    Raises if the database is unavailable, leaving every record not yet stored spooled."""
    result = _drain_file(store, path, batch)
    if client is not None:
        result += _drain_redis(store, client, batch, lease_ms)
    return result


def drain_local_spool(store: DeadLetterStore | None = None,
                      path: Path | None = None) -> DrainResult:
    """Drain this host's file spool (at worker start: reconcile runs on any host and
    reaches only its own file). Safe beside any other drain (the file lock). Never raises
    for an unavailable database: the records stay spooled for the next drain."""
    settings = get_settings()
    store = store or DeadLetterStore(retry_base_s=settings.dlq_retry_base)
    try:
        return _drain_file(store, path or settings.spool_path, CHUNK)
    except SQLAlchemyError as exc:
        log.warning("local dead-letter spool not drained, the database is unavailable (%s): "
                    "reconcile will drain it", type(exc).__name__)
        return DrainResult()


def _drain_file(store: DeadLetterStore, path: Path, batch: int) -> DrainResult:
    if not path.exists():
        return DrainResult()
    result = DrainResult()
    # errors="replace": a line torn by a crash must not make the whole file unreadable
    with open(path, "r+", encoding="utf-8", errors="replace") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        while chunk := list(itertools.islice(fh, batch)):  # bounded in memory as in SQL
            result += _store(store, [line for line in chunk if line.strip()])
        fh.seek(0)
        fh.truncate()
        os.fsync(fh.fileno())
    return result


def _drain_redis(store: DeadLetterStore, client: redis.Redis, batch: int,
                 lease_ms: int) -> DrainResult:
    me = uuid.uuid4().hex
    mine, lease = keys.dlq_spool_processing(me), keys.dlq_spool_lease(me)
    result = DrainResult()
    try:
        _take(client, me, 0, lease_ms)  # leased and registered before holding anything
        adopt = client.register_script(_ADOPT)
        for other in drains_under_way(client) - {me}:
            taken = adopt(keys=[keys.dlq_spool_lease(other), keys.dlq_spool_processing(other),
                                keys.DLQ_SPOOL_DRAINS, mine], args=[other])
            if taken and taken > 0:
                log.warning("took over %d spooled dead letters from dead drain %s", taken, other)
        while raw := _take(client, me, batch, lease_ms):
            result += _store(store, raw)
            client.delete(mine)  # only this drain moves items into `mine`: all were stored
    except BaseException:
        try:  # hand what this drain holds to the next drain now, not when the lease expires
            client.delete(lease)
        except redis.RedisError:
            pass
        raise
    pipe = client.pipeline(transaction=False)
    pipe.srem(keys.DLQ_SPOOL_DRAINS, me)
    pipe.delete(lease)
    pipe.execute()
    return result


def _take(client: redis.Redis, me: str, batch: int, lease_ms: int) -> list[bytes]:
    """Renew the lease, move up to `batch` items into this drain's list; return the list.
    One round trip; the lease is set before any item is moved."""
    mine = keys.dlq_spool_processing(me)
    pipe = client.pipeline(transaction=False)
    pipe.set(keys.dlq_spool_lease(me), "1", px=lease_ms)
    pipe.sadd(keys.DLQ_SPOOL_DRAINS, me)
    for _ in range(batch):
        pipe.lmove(keys.DLQ_SPOOL, mine, "LEFT", "RIGHT")
    pipe.lrange(mine, 0, -1)
    return list(pipe.execute()[-1])


def _store(store: DeadLetterStore, lines: list[bytes] | list[str]) -> DrainResult:
    records, unreadable = [], []
    for line in lines:
        try:
            records.append(DeadLetterRecord.from_json(line))
        except (ValueError, TypeError, AttributeError) as exc:  # quarantined, not dropped
            text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
            unreadable.append(Unreadable(text, f"unreadable spooled dead letter: {exc}"))
    written = store.write(records, unreadable)
    return DrainResult(written.stored, written.quarantined)


