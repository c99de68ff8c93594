"""A dead worker's jobs are back on their queues within seconds, not after the visibility
timeout (an hour by default).

kombu keeps every message a worker holds (reserved, running, or waiting for a retry's ETA)
in its `unacked` hash until the ack, and hands it out again only after the visibility
timeout, which must stay long (above backoff cap + time limit). So each worker also keeps:

- a liveness key (`keys.alive(hostname)`), set before it consumes and renewed on its event
  loop's timer every `SLUICE_WORKER_HEARTBEAT_INTERVAL`, expiring after
  `SLUICE_WORKER_HEARTBEAT_TTL` (however long its jobs run: the timer is the main process');
- the delivery tags it holds (`keys.held(hostname)`), added in the same pipeline as kombu's
  unacked entry and removed with it on ack (`delivery.transport.QoS`).

`recover_dead` (every live worker runs it on its heartbeat; one at a time under a lock) finds
holders whose liveness key has expired and restores each held message as kombu's own restore
does (same transaction: the unacked entry out, the message back at the head of its queue,
flagged redelivered), once: a second recoverer finds the entry gone. A worker that restarts
under the same name restores what its previous life held before it consumes anything.
A worker paused (SIGSTOP) past the TTL counts as dead: its jobs run elsewhere, and the one it
was running finishes too when it resumes (at-least-once: effect keys make that harmless).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import redis

from sluice import keys
from sluice.connections import text

__all__ = ["Recovered", "announce", "restore_held", "recover_dead", "holders"]

log = logging.getLogger("sluice.recovery")


@dataclass(frozen=True, slots=True)
class Recovered:
    """Messages put back on their queues, by queue."""

    by_queue: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.by_queue.values())


def announce(client: redis.Redis, hostname: str, ttl_s: float) -> None:
    """This worker is alive (and a holder recoveries must watch): set or renew its key."""
    pipe = client.pipeline(transaction=False)
    pipe.set(keys.alive(hostname), f"{time.time():.3f}", px=max(1, int(ttl_s * 1000)))
    pipe.sadd(keys.HOLDERS, hostname)
    pipe.execute()


def holders(client: redis.Redis) -> dict[str, tuple[float | None, int]]:
    """Every known holder -> (last heartbeat, None when dead; messages it holds)."""
    names = sorted(text(h) for h in client.smembers(keys.HOLDERS))
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.get(keys.alive(name))
        pipe.scard(keys.held(name))
    replies = pipe.execute()
    return {name: (float(replies[2 * i]) if replies[2 * i] else None, int(replies[2 * i + 1]))
            for i, name in enumerate(names)}


def restore_held(client: redis.Redis, hostname: str) -> Recovered:
    """Put every message `hostname` holds back on its queue, then forget its holdings."""
    counts: dict[str, int] = {}
    for tag in sorted(text(t) for t in client.smembers(keys.held(hostname))):
        queue = _restore(client, hostname, tag)
        if queue is not None:
            counts[queue] = counts.get(queue, 0) + 1
    pipe = client.pipeline(transaction=False)
    pipe.delete(keys.held(hostname))
    for queue, n in counts.items():
        pipe.hincrby(keys.RECOVERED, queue, n)
    pipe.execute()
    if counts:
        log.error("worker %s is gone: %d job(s) it held put back on their queues (%s)",
                  hostname, sum(counts.values()), counts)
    return Recovered(counts)


def recover_dead(client: redis.Redis, me: str | None = None, lock_s: float = 30.0) -> Recovered:
    """Restore what every dead holder held (not `me`). One recoverer at a time."""
    lock = client.lock(keys.RECOVERY_LOCK, timeout=lock_s)
    if not lock.acquire(blocking=False):
        return Recovered({})
    try:
        total: dict[str, int] = {}
        for name, (seen, _held) in holders(client).items():
            if seen is not None or name == me:
                continue
            for queue, n in restore_held(client, name).by_queue.items():
                total[queue] = total.get(queue, 0) + n
            if not client.exists(keys.alive(name)):  # not restarted meanwhile
                client.srem(keys.HOLDERS, name)
        return Recovered(total)
    finally:
        try:
            lock.release()
        except redis.exceptions.LockError:
            pass


def _restore(client: redis.Redis, hostname: str, tag: str) -> str | None:
    """kombu's `restore_by_tag`, with our holder index: one WATCH/MULTI transaction."""
    queue: list[str | None] = [None]

    def transaction(pipe: Any) -> None:
        raw = pipe.hget(keys.KOMBU_UNACKED, tag)
        pipe.multi()
        pipe.zrem(keys.KOMBU_UNACKED_INDEX, tag)
        pipe.hdel(keys.KOMBU_UNACKED, tag)
        pipe.srem(keys.held(hostname), tag)
        queue[0] = None
        if raw:
            message, _exchange, routing_key = json.loads(raw)
            for part in (message.get("headers"), message.get("properties", {})
                         .get("delivery_info")):
                if isinstance(part, dict):
                    part["redelivered"] = True
            pipe.rpush(routing_key, json.dumps(message))  # BRPOP side: taken next
            queue[0] = str(routing_key)

    client.transaction(transaction, keys.KOMBU_UNACKED)
    return queue[0]
