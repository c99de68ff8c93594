"""The queue-pressure gate's decisions: pure functions, values in, frozen dataclasses out.

`level_for` maps a sampled depth to a level with hysteresis (escalate at once, step down only
after depth has stayed below the level's threshold minus a margin for a dwell time), and
`decide` applies DESIGN.md's table to one submission. No I/O, no clock: `now` is passed in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sluice.priorities import PressureLevel, Priority

__all__ = ["Thresholds", "LevelState", "Decision", "level_for", "decide", "raw_level",
           "QUEUE_PRESSURE", "BROKER_UNAVAILABLE", "KILL_SWITCH"]

QUEUE_PRESSURE = "QUEUE_PRESSURE"
BROKER_UNAVAILABLE = "BROKER_UNAVAILABLE"
KILL_SWITCH = "KILL_SWITCH"

_LEVELS = (PressureLevel.NORMAL, PressureLevel.WARNING, PressureLevel.CRITICAL,
           PressureLevel.SHED)


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Depths at which WARNING, CRITICAL and SHED begin, and the falling-edge rules."""

    warning: int = 500
    critical: int = 1000
    shed: int = 5000
    margin: float = 0.10
    dwell: float = 2.0

    @classmethod
    def from_settings(cls, settings: Any) -> Thresholds:
        """The thresholds a `sluice.settings.Settings` describes (the one place they are
        built from settings)."""
        return cls(settings.pressure_warning, settings.pressure_critical,
                   settings.pressure_shed, settings.pressure_margin, settings.pressure_dwell)

    def entry(self, level: PressureLevel) -> int:
        """The depth at which `level` is entered."""
        return {PressureLevel.NORMAL: 0, PressureLevel.WARNING: self.warning,
                PressureLevel.CRITICAL: self.critical, PressureLevel.SHED: self.shed}[level]

    def exit_below(self, level: PressureLevel) -> float:
        """Depth must fall below this (threshold minus margin) before `level` may be left."""
        return self.entry(level) * (1 - self.margin)


@dataclass(frozen=True, slots=True)
class LevelState:
    """The level, and since when depth has been low enough to leave it (None: it is not)."""

    level: PressureLevel
    below_since: float | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """What the gate does with one submission."""

    allowed: bool
    delay_ms: int = 0
    reason: str | None = None
    retry_after_s: float = 0.0


def raw_level(depth: int, t: Thresholds) -> PressureLevel:
    """The level `depth` falls in, ignoring history."""
    for level in reversed(_LEVELS):
        if depth >= t.entry(level):
            return level
    return PressureLevel.NORMAL


def _sticky_level(depth: int, t: Thresholds, ceiling: PressureLevel) -> PressureLevel:
    """The highest level at or below `ceiling` whose exit bar `depth` has not gone under."""
    for level in reversed(_LEVELS[: _LEVELS.index(ceiling) + 1]):
        if depth >= t.exit_below(level):
            return level
    return PressureLevel.NORMAL


def level_for(depth: int, thresholds: Thresholds, previous: LevelState | None,
              now: float) -> LevelState:
    """The level for `depth` sampled at `now`, given the `previous` state.

    Rising is immediate. Falling happens only once depth has stayed below the current
    level's exit bar for `thresholds.dwell` seconds; it then drops straight to the level
    that depth supports (with the margin applied), not one step at a time.
    """
    raw = raw_level(depth, thresholds)
    if previous is None or previous.level is PressureLevel.UNKNOWN or raw >= previous.level:
        return LevelState(raw)
    if depth >= thresholds.exit_below(previous.level):
        return LevelState(previous.level)
    since = previous.below_since if previous.below_since is not None else now
    if now - since < thresholds.dwell:
        return LevelState(previous.level, since)
    return LevelState(_sticky_level(depth, thresholds, previous.level))


#: (level, priority) -> delay in ms; a missing pair means the job is shed.
_ACCEPT: dict[PressureLevel, dict[Priority, int]] = {
    PressureLevel.NORMAL: {p: 0 for p in Priority},
    PressureLevel.WARNING: {Priority.CRITICAL: 0, Priority.HIGH: 250, Priority.NORMAL: 250},
    PressureLevel.CRITICAL: {Priority.CRITICAL: 0, Priority.HIGH: 500},
    PressureLevel.SHED: {Priority.CRITICAL: 0},
    PressureLevel.UNKNOWN: {Priority.CRITICAL: 0},
}

#: Retry-After per level: roughly how long the level takes to clear at least.
RETRY_AFTER_S: dict[PressureLevel, float] = {
    PressureLevel.NORMAL: 1.0, PressureLevel.WARNING: 2.0, PressureLevel.CRITICAL: 5.0,
    PressureLevel.SHED: 10.0, PressureLevel.UNKNOWN: 5.0,
}


def decide(level: PressureLevel, priority: Priority) -> Decision:
    """Accept, delay or shed one submission of `priority` at `level` (DESIGN.md's table).

    CRITICAL is never shed and never delayed. At UNKNOWN (Redis unreachable) everything else
    is refused with BROKER_UNAVAILABLE; CRITICAL is accepted (into the durable outbox).
    """
    delay = _ACCEPT[level].get(priority)
    if delay is not None:
        return Decision(allowed=True, delay_ms=delay)
    reason = BROKER_UNAVAILABLE if level is PressureLevel.UNKNOWN else QUEUE_PRESSURE
    return Decision(allowed=False, reason=reason, retry_after_s=RETRY_AFTER_S[level])
