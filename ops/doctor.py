"""`sluice doctor`: one line per dependency, each saying what is wrong and what to do."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sluice import keys
from sluice.connections import redis_client, text, texts
from sluice.settings import get_settings, mask_url

__all__ = ["run_checks", "worker_state"]


def _redis() -> str:
    client = redis_client()
    client.ping()
    info = client.info("server")
    policy = client.config_get("maxmemory-policy").get("maxmemory-policy", "?")
    note = "" if policy == "noeviction" else f" (maxmemory-policy {policy}: use noeviction)"
    return f"redis {info.get('redis_version')} at " \
           f"{mask_url(get_settings().redis_url.get_secret_value())}{note}"


def _database() -> str:
    from sqlalchemy import text

    from sluice.connections import engine

    with engine().connect() as conn:
        conn.execute(text("SELECT 1"))
    return mask_url(get_settings().database_url.get_secret_value())


def _migrations() -> str:
    from dlq.migrate import check_schema, current_revision

    check_schema()
    return f"at head ({current_revision()})"


def _outbox() -> str:
    from delivery.outbox import outbox_size

    return f"{outbox_size()} CRITICAL job(s) waiting"


def _spool() -> str:
    from delivery.spool import spool_sizes

    try:
        client = redis_client()
        client.ping()
    except Exception:
        client = None
    sizes = spool_sizes(client, get_settings().spool_path)
    return f"{sizes['redis']} in Redis, {sizes['file']} in {get_settings().spool_path}"


def _stuck() -> str:
    stuck = {k: int(v) for k, v in texts(redis_client().hgetall(keys.STUCK)).items()}
    if stuck.get("over_time_limit") or stuck.get("over_visibility"):
        raise RuntimeError(f"{stuck.get('over_time_limit', 0)} job(s) past their time limit, "
                           f"{stuck.get('over_visibility', 0)} past the visibility timeout")
    return "none reported by the last reconcile"


def _config() -> str:
    s = get_settings()
    return (f"thresholds {s.thresholds}, visibility {s.visibility_timeout}s, backoff cap "
            f"{s.retry_backoff_max}s, time limit {s.task_time_limit}s")


def _workers() -> str:
    """Live workers, their last heartbeat and what they hold; dead ones until recovered."""
    from delivery.recovery import holders

    now, parts = time.time(), []
    for name, (seen, held) in holders(redis_client()).items():
        state = f"heartbeat {now - seen:.1f}s ago" if seen else "DEAD (its jobs are restored)"
        parts.append(f"{name}: {state}, holds {held}")
    return "; ".join(parts) or "no worker has run yet"


def _secrets() -> str:
    """A key is set, and which dead letters still need an old one (rotation is done when
    none do: then the old key can be dropped)."""
    from sqlalchemy import select

    from dlq.models import DeadLetter
    from dlq.store import DeadLetterStore
    from sluice.sealed import can_seal, stale_seal

    if not can_seal():
        raise RuntimeError("SLUICE_SECRET_KEY is not set: jobs with secret fields are refused "
                           "(make a key with `sluice secret-key`)")
    with DeadLetterStore().session() as session:
        rows = session.execute(select(DeadLetter.id, DeadLetter.sealed)
                               .where(DeadLetter.sealed.is_not(None))).all()
    old = [row.id for row in rows if stale_seal(row.sealed)]
    if old:
        raise RuntimeError(f"{len(old)} dead letter(s) sealed under an old key (ids "
                           f"{', '.join(map(str, old[:10]))}{'...' if len(old) > 10 else ''})"
                           ": keep that key in SLUICE_SECRET_KEY until they are replayed or "
                           "purged")
    return f"key set; {len(rows)} sealed dead letter(s), none under an old key"


CHECKS: dict[str, Callable[[], str]] = {
    "config": _config, "redis": _redis, "database": _database, "migrations": _migrations,
    "outbox": _outbox, "spool": _spool, "stuck jobs": _stuck, "workers": _workers,
    "secrets": _secrets,
}


def run_checks() -> list[dict[str, Any]]:
    """Run every check; a failing check reports its error instead of raising."""
    rows = []
    for name, check in CHECKS.items():
        try:
            rows.append({"check": name, "ok": True, "detail": check()})
        except Exception as exc:
            rows.append({"check": name, "ok": False,
                         "detail": f"{type(exc).__name__}: {exc}"[:300]})
    return rows


def worker_state(hostname: str) -> str:
    """`ready`, `shutting down`, or `unknown` (not running, or never started)."""
    raw = redis_client().get(keys.worker_state(hostname))
    return text(raw) if raw else "unknown"
