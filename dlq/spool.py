"""Where dead letters wait while the database is unavailable: a Redis list, then a local
fsync'd JSONL file if Redis is gone too. `drain_spool` moves them into the store."""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

import redis

from dlq.store import DeadLetterStore
from sluice import keys
from sluice.records import DeadLetterRecord

__all__ = ["spool", "spool_to_file", "drain_spool", "spool_sizes"]

log = logging.getLogger("sluice.dlq.spool")


def spool(rec: DeadLetterRecord, client: redis.Redis, path: Path) -> str:
    """Keep `rec` safe without the database. Returns where it went: `redis` or `file`."""
    try:
        client.rpush(keys.DLQ_SPOOL, rec.to_json())
        return "redis"
    except redis.RedisError as exc:
        log.warning("Redis spool unavailable (%s): spooling dead letter %s to %s",
                    type(exc).__name__, rec.task_id, path)
        spool_to_file(rec, path)
        return "file"


def spool_to_file(rec: DeadLetterRecord, path: Path) -> None:
    """Append one JSON line and fsync before returning: the record survives a crash."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.write(rec.to_json() + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def drain_spool(store: DeadLetterStore, client: redis.Redis | None, path: Path,
                batch: int = 500) -> int:
    """Move spooled records into the store; idempotent (the store dedupes by task id).

    Redis entries are removed only after the batch is committed; the file is truncated only
    after all of its lines are committed. Raises if the database is still down, leaving
    everything spooled. Returns how many records were moved.
    """
    moved = _drain_file(store, path)
    if client is not None:
        moved += _drain_redis(store, client, batch)
    return moved


def _drain_redis(store: DeadLetterStore, client: redis.Redis, batch: int) -> int:
    moved = 0
    while raw := client.lrange(keys.DLQ_SPOOL, 0, batch - 1):
        store.record_many(_parse(raw))
        client.ltrim(keys.DLQ_SPOOL, len(raw), -1)
        moved += len(raw)
    return moved


def _drain_file(store: DeadLetterStore, path: Path) -> int:
    if not path.exists():
        return 0
    with open(path, "r+", encoding="utf-8") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        lines = [line for line in fh.read().splitlines() if line.strip()]
        store.record_many(_parse(lines))
        fh.seek(0)
        fh.truncate()
        os.fsync(fh.fileno())
    return len(lines)


def _parse(lines: list[bytes] | list[str]) -> list[DeadLetterRecord]:
    out = []
    for line in lines:
        try:
            out.append(DeadLetterRecord.from_json(line))
        except (ValueError, TypeError) as exc:  # keep going: one bad line must not block the rest
            log.error("unreadable spooled dead letter skipped (%s): %.200r", exc, line)
    return out


def spool_sizes(client: redis.Redis | None, path: Path) -> dict[str, int | None]:
    """How many records wait in each spool (None when that spool cannot be read)."""
    try:
        in_redis: int | None = int(client.llen(keys.DLQ_SPOOL)) if client else None
    except redis.RedisError:
        in_redis = None
    in_file = 0
    if path.exists():
        with open(path, encoding="utf-8") as fh:
            in_file = sum(1 for line in fh if line.strip())
    return {"redis": in_redis, "file": in_file}
