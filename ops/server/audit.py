"""The audit log of operator actions taken through the server (bulk replay and discard,
kill switches): who, when, what (filter or ids), how many, and what came of it.

Kept in Redis as a capped list, newest first: it is read by the console next to the actions
themselves, and Redis is already what every operator action needs to be up.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from ops.server.auth import Caller
from sluice import keys

__all__ = ["AUDIT_KEY", "KEEP", "record", "recent"]

#: list of JSON entries, newest first (belongs in `sluice.keys`: see docs/server.md)
AUDIT_KEY = keys.SERVER_AUDIT
#: entries kept; older ones are trimmed as new ones arrive
KEEP = 1000


def record(client: redis.Redis, caller: Caller, action: str, scope: dict[str, Any],
           result: dict[str, Any], now: float | None = None) -> dict[str, Any]:
    """Append one entry (the token's name, never the token) and trim to `KEEP`."""
    entry = {"at": time.time() if now is None else now, "who": caller.name,
             "action": action, "scope": scope, "result": result}
    pipe = client.pipeline(transaction=False)
    pipe.lpush(AUDIT_KEY, json.dumps(entry, default=str))
    pipe.ltrim(AUDIT_KEY, 0, KEEP - 1)
    pipe.execute()
    return entry


def recent(client: redis.Redis, limit: int = 100) -> list[dict[str, Any]]:
    """The latest `limit` entries, newest first."""
    return [json.loads(raw) for raw in client.lrange(AUDIT_KEY, 0, max(0, limit - 1))]
