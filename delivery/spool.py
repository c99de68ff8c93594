"""Where dead letters wait while the database is unavailable: written here, by whoever holds
one (a worker's task base, its consumer, the transport), and drained into the store by
`dlq.drain`.

The spool is first a local JSONL file, appended and fsync'd under a file lock: it is durable
on the host, whatever Redis' persistence. Only when the file cannot be written does a record
go to a Redis list.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

import redis

from sluice import keys
from sluice.records import DeadLetterRecord

__all__ = ["spool", "spool_to_file", "spool_sizes", "drains_under_way"]

log = logging.getLogger("sluice.spool")


def spool(rec: DeadLetterRecord, client: redis.Redis, path: Path) -> str:
    """Keep `rec` safe without the database. Returns where it went: `file` or `redis`.

    The fsync'd file comes first: it survives a crash of this host's processes and of Redis
    (which may run without persistence); Redis is the fallback for a host whose disk is full
    or read-only. Raises only if both fail."""
    try:
        spool_to_file(rec, path)
        return "file"
    except OSError as exc:
        log.error("file spool %s unwritable (%s): spooling dead letter %s to Redis", path,
                  exc, rec.task_id)
    client.rpush(keys.DLQ_SPOOL, rec.to_json())
    return "redis"


def spool_to_file(rec: DeadLetterRecord, path: Path) -> None:
    """Append one JSON line and fsync before returning: the record survives a crash."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.write(rec.to_json() + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def drains_under_way(client: redis.Redis) -> set[str]:
    """The ids of the Redis drains under way (or that died under way)."""
    return {m.decode() if isinstance(m, bytes) else str(m)
            for m in client.smembers(keys.DLQ_SPOOL_DRAINS)}


def spool_sizes(client: redis.Redis | None, path: Path) -> dict[str, int | None]:
    """How many records wait in each spool (None when that spool cannot be read). Records
    a Redis drain holds in its processing list count as spooled until stored."""
    try:
        in_redis: int | None = None
        if client is not None:
            pipe = client.pipeline(transaction=False)
            for name in [keys.DLQ_SPOOL, *map(keys.dlq_spool_processing, drains_under_way(client))]:
                pipe.llen(name)
            in_redis = sum(int(n) for n in pipe.execute())
    except redis.RedisError:
        in_redis = None
    in_file = 0
    if path.exists():
        with open(path, encoding="utf-8", errors="replace") as fh:
            in_file = sum(1 for line in fh if line.strip())
    return {"redis": in_redis, "file": in_file}
