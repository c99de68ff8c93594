"""Operator actions, each recorded in the audit log: the one place the API and the console
both call, so that a kill switch or a bulk replay is the same act from either."""

from __future__ import annotations

from typing import Any

import redis

from dlq.store import DeadLetterStore
from ops.server import audit, deps
from ops.server.auth import Caller
from ops.server.dead_letters import BulkResult, discard_bulk, replay_bulk
from producers import killswitch
from sluice.errors import InvalidOption, UsageError

__all__ = ["ACTIONS", "bulk", "switch_on", "switch_off"]

ACTIONS = ("replay", "discard")


def bulk(action: str, store: DeadLetterStore, client: redis.Redis, caller: Caller,
         ids: list[int], scope: dict[str, Any]) -> dict[str, Any]:
    """Replay (through the gate) or discard `ids`; returns and records the outcome."""
    if action not in ACTIONS:
        raise UsageError(f"action must be one of {', '.join(ACTIONS)}")
    result: BulkResult = (replay_bulk(store, deps.producer(), ids) if action == "replay"
                          else discard_bulk(store, ids))
    out = result.as_dict()
    audit.record(client, caller, action, scope, out)
    return out


def switch_on(client: redis.Redis, caller: Caller, target: str, reason: str) -> str:
    """`killswitch.turn_on`, recorded; InvalidOption names a target that is neither a
    priority nor a task."""
    try:
        key = killswitch.turn_on(client, target, reason)
    except ValueError as exc:
        raise InvalidOption(str(exc)) from None
    audit.record(client, caller, "killswitch on", {"target": key}, {"reason": reason})
    return key


def switch_off(client: redis.Redis, caller: Caller, target: str) -> bool:
    """`killswitch.turn_off`, recorded; returns whether the switch was on."""
    try:
        was_on = killswitch.turn_off(client, target)
    except ValueError as exc:
        raise InvalidOption(str(exc)) from None
    audit.record(client, caller, "killswitch off", {"target": target}, {"was_on": was_on})
    return was_on
