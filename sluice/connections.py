"""Redis and SQL connections: created once per process from the settings."""

from __future__ import annotations

import functools
import ssl
from collections.abc import Mapping
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from sluice.settings import get_settings

__all__ = ["Base", "text", "texts", "hash_fields", "redis_client", "engine", "session_factory", "reset", "ssl_options"]


def text(value: Any) -> str:
    """A Redis reply as text (replies are bytes: clients here do not decode responses)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def texts(mapping: Any) -> dict[str, str]:
    """A Redis hash reply (HGETALL) as text keys and values."""
    return {text(k): text(v) for k, v in dict(mapping).items()}


def hash_fields(values: Mapping[str, str | float | int]) -> Any:
    """`values` as HSET's `mapping` (redis-py's hint has an invariant key type that a dict
    of str keys does not match)."""
    return dict(values)


class Base(DeclarativeBase):
    """Declarative base shared by every Sluice table (outbox, dead letters)."""


def ssl_options(url: str) -> dict[str, Any] | None:
    """TLS options for a `rediss://` URL: the certificate is always checked."""
    if not url.startswith("rediss://"):
        return None
    return {"ssl_cert_reqs": ssl.CERT_REQUIRED}


@functools.cache
def redis_client(url: str | None = None) -> redis.Redis:
    """A pooled client for `url` (default: SLUICE_REDIS_URL). Short timeouts: the gate must
    learn quickly that Redis is gone rather than hang a producer."""
    settings = get_settings()
    url = url or settings.redis_url.get_secret_value()
    return redis.Redis.from_url(
        url,
        socket_timeout=settings.redis_socket_timeout,
        socket_connect_timeout=settings.redis_socket_timeout,
        health_check_interval=30,
        # no silent retries: a retried send that had arrived is a duplicate job, and the
        # callers (gate, send, reconcile) each know better what a failure means
        retry=Retry(NoBackoff(), 0),
    )


@functools.cache
def engine(url: str | None = None) -> Engine:
    """The SQLAlchemy engine for `url` (default: SLUICE_DATABASE_URL)."""
    url = url or get_settings().database_url.get_secret_value()
    if url.startswith("sqlite"):
        eng = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(eng, "connect", _sqlite_pragmas)
        return eng
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20,
                         connect_args={"connect_timeout": 3})


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def session_factory(url: str | None = None) -> sessionmaker[Session]:
    """A session factory bound to `engine(url)`."""
    return sessionmaker(engine(url), expire_on_commit=False)


def reset() -> None:
    """Forget cached settings and connections (after the environment changed: tests, CLI)."""
    redis_client.cache_clear()
    engine.cache_clear()
    get_settings.cache_clear()
