"""Kill switches: stop a priority, a task or a tenant for every producer at once (stored in
Redis)."""

from __future__ import annotations

import redis

from sluice import keys
from sluice.connections import texts
from sluice.priorities import Priority

__all__ = ["switch_key", "turn_on", "turn_off", "list_switches", "blocking_switch"]


def switch_key(target: str) -> str:
    """`LOW` or `priority:low` -> `priority:LOW`; `task:email.send` or `email.send` -> `task:...`;
    `tenant:acme` -> `tenant:acme`.

    Raises ValueError naming the target when it is neither a priority, a task nor a tenant.
    """
    kind, _, name = target.partition(":") if ":" in target else ("", "", target)
    if kind == "tenant" and name:
        return f"tenant:{name}"
    if kind in ("", "priority"):
        try:
            return f"priority:{Priority.parse(name).name}"
        except ValueError:
            if kind == "priority":
                raise
    if kind in ("", "task") and name:
        return f"task:{name}"
    raise ValueError(f"kill-switch target {target!r} is none of `priority:NAME`, `task:NAME`, "
                     "`tenant:NAME`")


def turn_on(client: redis.Redis, target: str, reason: str) -> str:
    """Switch `target` off for all producers; returns the normalised key."""
    key = switch_key(target)
    client.hset(keys.KILL_SWITCHES, key, reason or "switched off")
    return key


def turn_off(client: redis.Redis, target: str) -> bool:
    """Lift the switch; returns whether one was set."""
    return bool(client.hdel(keys.KILL_SWITCHES, switch_key(target)))


def list_switches(client: redis.Redis) -> dict[str, str]:
    """Every switch that is on, key -> reason."""
    return texts(client.hgetall(keys.KILL_SWITCHES))


def blocking_switch(switches: dict[str, str], task_name: str, priority: Priority,
                    tenant: str | None = None) -> tuple[str, str] | None:
    """The switch that blocks this submission, if any (pure)."""
    for key in (f"task:{task_name}", f"priority:{priority.name}", f"tenant:{tenant}"):
        if key in switches:
            return key, switches[key]
    return None
