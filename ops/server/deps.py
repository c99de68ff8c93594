"""What the routes share: the producer, the dead-letter store, the Redis client, the
settings. The producer is the process-wide one `sluice submit` and `submit()` use (its
monitor started with the app); the store checks the schema once, on first use, so that
`/health` answers even while the database is down."""

from __future__ import annotations

import threading
from typing import Annotated

import redis
from fastapi import Depends, Request

from dlq.store import DeadLetterStore
from producers import Producer, default_producer
from sluice.connections import redis_client
from sluice.settings import Settings, get_settings

__all__ = ["producer", "store", "client", "settings", "Redis", "Store"]

_lock = threading.Lock()


def producer() -> Producer:
    """The gate and the sends, shared with every other face of this process."""
    return default_producer()


def store(request: Request) -> DeadLetterStore:
    """The dead-letter store, refused (PendingMigrations) on a stale schema."""
    with _lock:
        found: DeadLetterStore | None = getattr(request.app.state, "store", None)
        if found is None:
            from dlq.migrate import check_schema

            check_schema()
            found = request.app.state.store = DeadLetterStore()
        return found


def client() -> redis.Redis:
    """The process-wide Redis client."""
    return redis_client()


def settings() -> Settings:
    """The process-wide settings."""
    return get_settings()


#: route parameters: the Redis client, the dead-letter store
Redis = Annotated[redis.Redis, Depends(client)]
Store = Annotated[DeadLetterStore, Depends(store)]
